"""BLEG stage 2 of one fold as a task of the training loop (``fmgnn.engine``).

The fold's training subjects are instruction-tuned, its validation subjects pick the epoch
(lowest answer loss); test subjects are never read. The export is the best epoch in Hugging Face
format: ``encoder/`` (the GCN), ``lm/`` (LoRA merged, with its tokenizer) and ``stage2.json``.
Checkpoints hold the trained weights only (a frozen LM is not copied every epoch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.instruction import GraphLanguageModel, TextEncoder
from bleg.language_model import LanguageModelConfig, apply_finetune_mode, hidden_size, load_language_model, merged
from bleg.texts import Description, question
from fmgnn.cohort import Cohort
from fmgnn.engine import BatchLoss, Validation, World, to_device, unwrap
from fmgnn.evaluation.splits import Split
from fmgnn.graph_stream import PartGraphs
from fmgnn.graphs import GraphConfig


@dataclass
class InstructionConfig:
    """Args:
        epochs: Maximum epochs (official: 5).
        batch_size: Subjects per batch and worker.
        lr: Learning rate of the language model's trained weights (official: 5e-5).
        encoder_lr: Learning rate of the weights that start random: the GCN, and an LM head the
            checkpoint lacks (all-MiniLM's masked-LM head).
        weight_decay: AdamW weight decay.
        patience: Stop after this many epochs without a lower validation answer loss.
        encoder_hidden: Hidden widths of the GCN (official: 256, 256).
        encoder_dropout: Dropout between GCN layers.
    """

    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    encoder_lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 2
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 256])
    encoder_dropout: float = 0.0


@dataclass
class InstructionSpec:
    """One fold's stage 2."""

    cohort_path: str
    split: Split
    graph: GraphConfig
    lm: LanguageModelConfig
    train: InstructionConfig
    descriptions: dict[str, Description]
    seed: int = 0


def batch_loss(model: torch.nn.Module, batch: dict[str, Any]) -> BatchLoss:
    loss = model(batch["graphs"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    return BatchLoss(loss, len(batch["input_ids"]))


class InstructionTask:
    """Stage 2 of one fold: the GCN's node outputs as graph tokens before [question][answer], LM loss on
    the answer."""

    trainable_only = True

    def __init__(self, name: str, spec: InstructionSpec, output: Path | None = None) -> None:
        self.name, self.spec, self.output = name, spec, output
        self.seed, self.epochs, self.patience = spec.seed, spec.train.epochs, spec.train.patience

    def setup(self, world: World) -> None:
        self.world = world
        spec = self.spec
        cohort = Cohort(spec.cohort_path)
        ids, labels, names = cohort.scan_ids(), cohort.labels(), cohort.metadata.label_names
        self.n_rois, self.prompt = cohort.n_rois, question(cohort.metadata.task)
        self.answers = {i: spec.descriptions[str(ids[i])].answer(names[labels[i]])
                        for i in [*spec.split.train, *spec.split.val]}
        # Held when they fit graph.memory_mb, streamed when not (fmgnn.graph_stream); each graph carries its
        # answer text, and a batch its answers.
        self.train_graphs = PartGraphs(cohort, spec.split.train, spec.graph, self.attach_answers)
        self.val_graphs = PartGraphs(cohort, spec.split.val, spec.graph, self.attach_answers)

    def attach_answers(self, graphs: list[Data], rows: np.ndarray) -> None:
        for graph, row in zip(graphs, rows):
            graph.answer = self.answers[int(row)]

    def with_text(self, graphs: Batch, generator: torch.Generator) -> dict[str, Any]:
        """A PyG batch of graphs plus padded token ids and answer labels; ``generator`` draws masked-LM positions."""
        pairs = [self.text_encoder.pair(self.prompt, answer, generator) for answer in graphs.answer]
        return {"graphs": graphs, **self.text_encoder.pad([p[0] for p in pairs], [p[1] for p in pairs])}

    def build_model(self) -> GraphLanguageModel:
        spec = self.spec
        lm, self.tokenizer, self.kind = load_language_model(spec.lm)
        lm = apply_finetune_mode(lm, spec.lm)
        encoder = GraphTokenEncoder(GraphEncoderConfig(
            in_channels=self.train_graphs.first().num_node_features, hidden=spec.train.encoder_hidden,
            out_channels=hidden_size(lm), dropout=spec.train.encoder_dropout))
        self.text_encoder = TextEncoder(self.tokenizer, self.kind, spec.lm.max_length - self.n_rois,
                                        spec.lm.mlm_probability)
        self.new_weights = set(getattr(lm, "fmgnn_new_weights", []))
        return GraphLanguageModel(encoder, lm, self.kind)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        # Weights that start random (the GCN, an LM head the checkpoint lacked) learn at encoder_lr; the
        # pretrained LM weights (or their LoRA adapters) at the paper's lower lr.
        def fresh(name: str) -> bool:
            return name.startswith("encoder.") or \
                name.removeprefix("lm.").removeprefix("base_model.model.") in self.new_weights

        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return torch.optim.AdamW(
            [{"params": [p for n, p in trained if fresh(n)], "lr": self.spec.train.encoder_lr},
             {"params": [p for n, p in trained if not fresh(n)], "lr": self.spec.train.lr}],
            weight_decay=self.spec.train.weight_decay)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[dict[str, Any]]:
        # Ray: each worker tunes on its own shard of the training subjects.
        positions = self.train_graphs.shard_positions(epoch, self.seed, self.world.rank, self.world.size)
        for graphs in self.train_graphs.ordered(positions, self.spec.train.batch_size):
            yield self.with_text(graphs, generator)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> BatchLoss:
        return batch_loss(model, batch)

    def norm_forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> None:
        """The GCN alone: its BatchNorms are the model's only ones (``fmgnn.engine.refresh_batch_norm``)."""
        graphs = batch["graphs"]
        unwrap(model).encoder(graphs.x, graphs.edge_index, graphs.edge_weight)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module) -> Validation:
        # The same masked positions every epoch, so that validation losses compare.
        generator = torch.Generator().manual_seed(0)
        model.eval()
        total, count = 0.0, 0
        for graphs in self.val_graphs.batches(self.spec.train.batch_size):
            loss = batch_loss(model, to_device(self.with_text(graphs, generator), self.world.device))
            total, count = total + loss.value.item() * loss.size, count + loss.size
        val_loss = total / max(count, 1)
        return Validation(val_loss, {"val_loss": val_loss})

    def test(self, model: torch.nn.Module) -> dict[str, Any]:
        return {}  # stage 2 never reads test subjects

    def export(self, model: GraphLanguageModel, directory: Path) -> None:
        model.encoder.save_pretrained(directory / "encoder")
        merged(model.lm).save_pretrained(directory / "lm")
        self.tokenizer.save_pretrained(directory / "lm")
        (directory / "stage2.json").write_text(json.dumps({
            "kind": self.kind, "base_lm": self.spec.lm.path, "finetune": self.spec.lm.finetune,
            "split": self.spec.split.name}, indent=2))
