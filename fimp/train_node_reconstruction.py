"""One reconstruction model on one large graph (cells, images) as a task of the training loop (``fmgnn.engine``).

Each worker takes its shard of the training nodes, in batches; a batch runs on the in-neighbourhood
its targets need (as many hops as the model has message-passing layers), so memory stays bounded
however large the graph. Validation and test nodes keep one held-out mask for the whole run (fixed
by the seed) and those tokens are hidden from every forward pass; training nodes draw a new mask
every epoch unless the task fixes them (images). The epoch with the lowest validation MSE is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from fimp.reconstruction import TRIVIAL_KINDS, ReconstructionConfig, masked_mse
from fimp.tasks.fmri import reconstruction_metrics, window_mask
from fimp.tasks.nodes import NodeTask, held_out_masks, neighbourhood, scale_tokens
from fimp.train_reconstruction import ReconstructionTrainConfig, TokenReconstructionTask
from fmgnn.engine import BatchLoss, World, unwrap


@dataclass
class NodeReconstructionSpec:
    task: NodeTask
    train: list[int]
    val: list[int]
    test: list[int]
    mask_ratio: float
    model: ReconstructionConfig
    optim: ReconstructionTrainConfig = field(default_factory=ReconstructionTrainConfig)
    init_state: dict[str, Tensor] | None = None
    seed: int = 0


def message_hops(config: ReconstructionConfig) -> int:
    """How far a batch's neighbourhood reaches so that its targets' outputs equal the whole graph's.

    GCN weighs a message by its source's degree too, so it needs one hop more to count the outermost
    sources' edges. GPS's global attention sees the batch's neighbourhood, not the whole graph.
    """
    if config.kind == "fimp":
        return config.fimp_layers
    if config.kind in ("foundation", "mlp", *TRIVIAL_KINDS):
        return 0
    return config.gnn_layers + 1 if config.kind == "gcn" else config.gnn_layers


def run_on(model: torch.nn.Module, x: Tensor, masks: Tensor, edge_index: Tensor, targets: Tensor, hops: int) -> Tensor:
    """Predictions (len(targets), f, w) from the targets' neighbourhood only."""
    sub = neighbourhood(edge_index, targets, hops, len(x))
    config = unwrap(model).config
    extra = {"batch": torch.zeros(len(sub.nodes), dtype=torch.long, device=x.device)} if config.kind == "gps" else {}
    return model(x[sub.nodes], masks[sub.nodes], sub.edge_index, **extra)[sub.targets]


class NodeReconstructionTask(TokenReconstructionTask):
    """One model on one split of the nodes of one graph, in batches of target nodes."""

    def __init__(self, name: str, spec: NodeReconstructionSpec, output: Path | None = None) -> None:
        super().__init__(name, spec.model, spec.optim, spec.init_state, spec.seed, output)
        self.spec = spec

    def setup(self, world: World) -> None:
        self.world = world
        task, device = self.spec.task, world.device
        # The graph, its tokens and masks live where the model does; host copies only for the records.
        x = scale_tokens(task.x, self.spec.train) if task.standardize else task.x
        self.x, self.edge_index = x.to(device), task.edge_index.to(device)
        self.fixed = held_out_masks(task, self.spec.mask_ratio, 10_000 + self.spec.seed).to(device)
        self.hops = message_hops(self.spec.model)
        self.train_nodes = torch.tensor(self.spec.train, device=device)
        # Ray: each worker trains on its own shard of the training nodes.
        self.sampler = DistributedSampler(self.spec.train, num_replicas=world.size, rank=world.rank, shuffle=True,
                                          seed=self.seed)

    def batches(self, epoch: int, generator: torch.Generator) -> Any:
        masks = self.fixed.clone()
        if self.spec.task.masks is None:  # fresh held-out tokens for the training nodes
            masks[self.train_nodes] = window_mask(len(self.train_nodes), self.x.shape[1], self.spec.mask_ratio,
                                                  generator, self.spec.task.span_masks).to(masks.device)
        self.sampler.set_epoch(epoch)
        order = self.train_nodes[torch.tensor(list(self.sampler), device=self.train_nodes.device)]
        for start in range(0, len(order), self.optim.batch_size):
            yield order[start:start + self.optim.batch_size], masks

    def loss(self, model: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> BatchLoss:
        targets, masks = batch
        predicted = run_on(model, self.x, masks, self.edge_index, targets, self.hops)
        return BatchLoss(masked_mse(predicted, self.x[targets], masks[targets]), len(targets))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        model.eval()
        nodes, size = self.spec.val if part == "val" else self.spec.test, self.optim.batch_size
        device = self.x.device
        predicted = torch.cat([run_on(model, self.x, self.fixed, self.edge_index,
                                      torch.tensor(nodes[i:i + size], device=device), self.hops)
                               for i in range(0, len(nodes), size)])
        # The first node, for the reconstruction plot: (f, w) true, predicted, held-out tokens.
        first = nodes[0]
        example = {"target": self.x[first].cpu().numpy(), "predicted": predicted[0].cpu().numpy(),
                   "mask": self.fixed[first].cpu().numpy(),
                   **{k: np.asarray(v) for k, v in self.spec.task.shape.items()}}
        return reconstruction_metrics(predicted, self.x[nodes], self.fixed[nodes]), example

    def training_values(self) -> Tensor:
        """Every token of the training nodes (N_train, f, w), as the loss sees them (scaled)."""
        return self.x[self.train_nodes]

    def task_record(self) -> Any:
        return self.spec.task.name
