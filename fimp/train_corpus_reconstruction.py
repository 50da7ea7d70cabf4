"""Pretraining on a corpus of sequences (``fimp/tasks/corpus.py``) as a task of the training loop.

The foundation model reads one sequence at a time, with no graph, so each worker needs only its own
sequences. The spec carries the corpus's index, not its values: each worker reads the sequences of its
share of the training units (``rank_units``; a unit is a scan's series, or a node of a one-subject
recording), pads them with its own first sequences to the largest rank's count (DDP's ranks must step
together), and shuffles them every epoch; with one worker the order and the training masks are those of
``DistributedSampler`` over every training sequence, as before the corpus was sharded. Validation works
the same way on the held-out units, and the sums behind MSE and R^2 are added over the workers. A held-out
unit's hidden windows are drawn from a generator seeded by the run's seed and the unit, so they do not
depend on the number of workers. Pretraining has no test part: its test is the held-out part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fimp.reconstruction import ReconstructionConfig, masked_mse
from fimp.tasks.corpus import CorpusIndex, read_units
from fimp.tasks.fmri import metrics_from_sums, reconstruction_sums, window_mask
from fimp.train_reconstruction import ReconstructionTrainConfig, TokenReconstructionTask
from fmgnn.engine import BatchLoss, World, sum_over_ranks
from fmgnn.errors import InputError


@dataclass
class CorpusReconstructionSpec:
    index: CorpusIndex
    train: list[int]  # units of ``index``
    val: list[int]
    mask_ratio: float
    span_masks: bool
    model: ReconstructionConfig
    optim: ReconstructionTrainConfig = field(default_factory=ReconstructionTrainConfig)
    init_state: dict[str, Tensor] | None = None
    seed: int = 0


def rank_units(index: CorpusIndex, units: list[int], size: int) -> list[list[int]]:
    """Each rank's units: the largest unit first to the rank with the fewest sequences so far, so that
    ranks pad little when units differ in size (a recording's thousands of vertices beside scans' regions);
    one rank takes every unit."""
    shares: list[list[int]] = [[] for _ in range(size)]
    counts = [0] * size
    for u in sorted(units, key=lambda u: (-index.units[u].sequences, u)):
        rank = counts.index(min(counts))
        shares[rank].append(u)
        counts[rank] += index.units[u].sequences
    return [sorted(share) for share in shares]


def held_out_masks(index: CorpusIndex, unit_of: np.ndarray, ratio: float, seed: int, span: bool) -> Tensor:
    """(n, f) hidden windows of held-out sequences whose units are ``unit_of``: each unit's from its own
    generator, so a sequence hides the same windows whichever worker reads it."""
    masks = torch.zeros(len(unit_of), index.n_windows, dtype=torch.bool)
    order = np.argsort(unit_of, kind="stable")  # each unit's sequences together, in corpus order
    present, starts = np.unique(unit_of[order], return_index=True)
    for u, rows in zip(present.tolist(), np.split(order, starts[1:])):
        generator = torch.Generator().manual_seed((10_000 + seed) * 1_000_003 + u)
        masks[torch.as_tensor(rows)] = window_mask(len(rows), index.n_windows, ratio, generator, span)
    return masks


class CorpusReconstructionTask(TokenReconstructionTask):
    """The foundation model on one split of a corpus's units, each worker on its own sequences."""

    def __init__(self, name: str, spec: CorpusReconstructionSpec, output: Path | None = None) -> None:
        super().__init__(name, spec.model, spec.optim, spec.init_state, spec.seed, output)
        self.spec = spec

    def setup(self, world: World) -> None:
        self.world, spec = world, self.spec
        shares = rank_units(spec.index, spec.train, world.size)
        if not all(shares):
            raise InputError(f"the corpus's training part has {len(spec.train)} units (scans or nodes), fewer than "
                             f"ray.num_workers={world.size}")
        x, _ = read_units(spec.index, shares[world.rank])
        steps = max(spec.index.sequences(share) for share in shares)
        if steps > len(x):  # padded with its own sequences
            x = torch.cat([x, x[torch.arange(steps - len(x)) % len(x)]])
        self.x = x.to(world.device)
        val = rank_units(spec.index, spec.val, world.size)[world.rank]
        val_x, unit_of = read_units(spec.index, val)
        self.val_x = val_x.to(world.device)
        self.val_masks = held_out_masks(spec.index, unit_of, spec.mask_ratio, spec.seed,
                                        spec.span_masks).to(world.device)
        self.edge_index = torch.empty(2, 0, dtype=torch.long, device=world.device)  # no graph

    def batches(self, epoch: int, generator: torch.Generator) -> Any:
        masks = window_mask(len(self.x), self.x.shape[1], self.spec.mask_ratio, generator,
                            self.spec.span_masks).to(self.x.device)  # fresh hidden windows every epoch
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + epoch))
        order = order.to(self.x.device)
        for start in range(0, len(order), self.optim.batch_size):
            rows = order[start:start + self.optim.batch_size]
            yield self.x[rows], masks[rows]

    def loss(self, model: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> BatchLoss:
        x, masks = batch
        return BatchLoss(masked_mse(model(x, masks, self.edge_index), x, masks), len(x))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, part: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        model.eval()
        sums, size, example = torch.zeros(4, dtype=torch.float64), self.optim.batch_size, {}
        for start in range(0, len(self.val_x), size):
            x, masks = self.val_x[start:start + size], self.val_masks[start:start + size]
            predicted = model(x, masks, self.edge_index)
            sums += reconstruction_sums(predicted, x, masks).cpu()
            if not example:  # the first held-out sequence (rank 0's), for the reconstruction plot
                example = {"target": x[0].cpu().numpy(), "predicted": predicted[0].cpu().numpy(),
                           "mask": masks[0].cpu().numpy()}
        return metrics_from_sums(sum_over_ranks(sums, self.world)), example

    def task_record(self) -> Any:
        return "corpus"
