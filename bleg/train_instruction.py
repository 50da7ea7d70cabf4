"""BLEG stage 2 of one fold as a task of the training loop (``fmgnn.engine``).

The fold's training subjects are instruction-tuned, its validation subjects pick the epoch
(lowest answer loss); test subjects are never read. The export is the best epoch in Hugging Face
format: ``encoder/`` (the GCN), ``lm/`` (LoRA merged, with its tokenizer) and ``stage2.json``.
Checkpoints hold the trained weights only (a frozen LM is not copied every epoch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Batch, Data

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.instruction import GraphLanguageModel, TextEncoder
from bleg.language_model import LanguageModelConfig, apply_finetune_mode, hidden_size, load_language_model, merged
from bleg.texts import Description, question
from fmgnn.baselines.train_gcn import load_graphs
from fmgnn.cohort import Cohort
from fmgnn.engine import BatchLoss, Validation, World, to_device, unwrap
from fmgnn.evaluation.splits import Split
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


@dataclass
class Example:
    graph: Data
    prompt: str
    answer: str


def make_examples(cohort: Cohort, indices: list[int], spec: InstructionSpec) -> list[Example]:
    ids, labels, names = cohort.scan_ids(), cohort.labels(), cohort.metadata.label_names
    prompt = question(cohort.metadata.task)
    graphs = load_graphs(cohort, indices, spec.graph)
    return [Example(graph, prompt, spec.descriptions[str(ids[i])].answer(names[labels[i]]))
            for graph, i in zip(graphs, indices)]


class Collate:
    """A PyG batch of graphs plus padded token ids and answer labels; ``generator`` draws masked-LM positions."""

    def __init__(self, text_encoder: TextEncoder, generator: torch.Generator) -> None:
        self.text_encoder = text_encoder
        self.generator = generator

    def __call__(self, examples: list[Example]) -> dict:
        pairs = [self.text_encoder.pair(e.prompt, e.answer, self.generator) for e in examples]
        text = self.text_encoder.pad([p[0] for p in pairs], [p[1] for p in pairs])
        return {"graphs": Batch.from_data_list([e.graph for e in examples]), **text}


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
        cohort = Cohort(self.spec.cohort_path)
        self.n_rois = cohort.n_rois
        self.train_examples = make_examples(cohort, self.spec.split.train, self.spec)
        self.val_examples = make_examples(cohort, self.spec.split.val, self.spec)
        # Ray: each worker tunes on its own shard of the training subjects.
        self.sampler = DistributedSampler(self.train_examples, num_replicas=world.size, rank=world.rank,
                                          shuffle=True, seed=self.seed)

    def build_model(self) -> GraphLanguageModel:
        spec = self.spec
        lm, self.tokenizer, self.kind = load_language_model(spec.lm)
        lm = apply_finetune_mode(lm, spec.lm)
        encoder = GraphTokenEncoder(GraphEncoderConfig(
            in_channels=self.train_examples[0].graph.num_node_features, hidden=spec.train.encoder_hidden,
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

    def batches(self, epoch: int, generator: torch.Generator) -> DataLoader:
        self.sampler.set_epoch(epoch)
        return DataLoader(self.train_examples, batch_size=self.spec.train.batch_size, sampler=self.sampler,
                          collate_fn=Collate(self.text_encoder, generator))

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> BatchLoss:
        return batch_loss(model, batch)

    def norm_forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> None:
        """The GCN alone: its BatchNorms are the model's only ones (``fmgnn.engine.refresh_batch_norm``)."""
        graphs = batch["graphs"]
        unwrap(model).encoder(graphs.x, graphs.edge_index, graphs.edge_weight)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module) -> Validation:
        # The same masked positions every epoch, so that validation losses compare.
        collate = Collate(self.text_encoder, torch.Generator().manual_seed(0))
        model.eval()
        total, count = 0.0, 0
        for batch in DataLoader(self.val_examples, batch_size=self.spec.train.batch_size, collate_fn=collate):
            loss = batch_loss(model, to_device(batch, self.world.device))
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
