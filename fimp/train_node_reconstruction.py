"""Training function of one reconstruction model on one large graph (cells, images): Ray Train wraps it.

Each worker takes its shard of the training nodes, in batches; a batch runs on the in-neighbourhood
its targets need (as many hops as the model has message-passing layers), so memory stays bounded
however large the graph. Validation and test nodes keep one held-out mask for the whole run (fixed
by the seed) and those tokens are hidden from every forward pass; training nodes draw a new mask
every epoch unless the task fixes them (images). The epoch with the lowest validation MSE is kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from fimp.reconstruction import ReconstructionConfig, build_model, masked_mse
from fimp.tasks.fmri import reconstruction_metrics, window_mask
from fimp.tasks.nodes import NodeTask, held_out_masks, neighbourhood, scale_tokens
from fimp.train_reconstruction import ReconstructionTrainConfig, end_epoch
from fmgnn.ray_logging import quiet_report_logs
from fmgnn.train_state import load_model_state, report_epoch, restore, seed_epoch, unwrap


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
    if config.kind in ("foundation", "mlp"):
        return 0
    return config.gnn_layers + 1 if config.kind == "gcn" else config.gnn_layers


def run_on(model: torch.nn.Module, x: Tensor, masks: Tensor, edge_index: Tensor, targets: Tensor, hops: int) -> Tensor:
    """Predictions (len(targets), f, w) from the targets' neighbourhood only."""
    sub = neighbourhood(edge_index, targets, hops, len(x))
    config = unwrap(model).config
    extra = {"batch": torch.zeros(len(sub.nodes), dtype=torch.long)} if config.kind == "gps" else {}
    return model(x[sub.nodes], masks[sub.nodes], sub.edge_index, **extra)[sub.targets]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: Tensor, masks: Tensor, edge_index: Tensor, nodes: list[int],
             batch_size: int, hops: int) -> tuple[dict[str, float], Tensor]:
    model.eval()
    predicted = torch.cat([run_on(model, x, masks, edge_index, torch.tensor(nodes[i:i + batch_size]), hops)
                           for i in range(0, len(nodes), batch_size)])
    return reconstruction_metrics(predicted, x[nodes], masks[nodes]), predicted


def train_node_reconstruction(config: dict[str, Any]) -> None:
    spec: NodeReconstructionSpec = config["spec"]
    quiet_report_logs()
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    task = spec.task
    x = scale_tokens(task.x, spec.train) if task.standardize else task.x
    fixed = held_out_masks(task, spec.mask_ratio, 10_000 + spec.seed)
    hops = message_hops(spec.model)

    model = build_model(spec.model)
    if spec.init_state is not None:
        result = model.load_state_dict(spec.init_state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"pretrained weights do not fit the model: {result.unexpected_keys[:5]}")
    sampler = DistributedSampler(spec.train, num_replicas=context.get_world_size(), rank=context.get_world_rank(),
                                 shuffle=True, seed=spec.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.optim.lr,
                                  weight_decay=spec.optim.weight_decay)
    model = ray.train.torch.prepare_model(model)  # Ray: DDP when there is more than one worker
    train_nodes = torch.tensor(spec.train)
    state = restore(model, optimizer)
    generator = torch.Generator()
    while not state.finished(spec.optim.epochs):
        epoch = state.epoch + 1
        sampler.set_epoch(epoch)
        generator.manual_seed(seed_epoch(spec.seed, epoch, context.get_world_rank()))
        masks = fixed.clone()
        if task.masks is None:  # fresh held-out genes for the training nodes
            masks[train_nodes] = window_mask(len(train_nodes), x.shape[1], spec.mask_ratio, generator)
        model.train()
        order = train_nodes[list(sampler)]
        total, count = 0.0, 0
        for start in range(0, len(order), spec.optim.batch_size):
            targets = order[start:start + spec.optim.batch_size]
            loss = masked_mse(run_on(model, x, masks, task.edge_index, targets, hops), x[targets], masks[targets])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
        val_metrics, _ = evaluate(unwrap(model), x, fixed, task.edge_index, spec.val, spec.optim.batch_size, hops)
        end_epoch(state, model, optimizer, epoch, total / max(count, 1), val_metrics, spec.optim)

    load_model_state(model, state.best_model)
    test_metrics, predicted = evaluate(unwrap(model), x, fixed, task.edge_index, spec.test, spec.optim.batch_size,
                                       hops)

    def export(directory: Path) -> None:
        torch.save(unwrap(model).state_dict(), directory / "model.pt")
        (directory / "model.json").write_text(json.dumps({"model": asdict(spec.model), "task": task.name}))
        # The first test node, for the reconstruction plot: (f, w) true, predicted, held-out tokens.
        first = spec.test[0]
        np.savez(directory / "example.npz", target=x[first].numpy(), predicted=predicted[0].numpy(),
                 mask=fixed[first].numpy(), **{k: np.asarray(v) for k, v in task.shape.items()})

    report_epoch(state, model, optimizer, {**state.history[-1], "best_epoch": state.best_epoch,
                                           "history": state.history, "done": True, "resumed_at": state.resumed_at,
                                           **{f"test_{k}": v for k, v in test_metrics.items()}}, export=export)
