"""Training function of BLEG stage 2 for one fold: plain PyTorch that Ray Train wraps.

The fold's training subjects are instruction-tuned, its validation subjects pick the epoch
(lowest answer loss); test subjects are never read. Rank 0 exports the best epoch in Hugging Face
format into the last checkpoint: ``encoder/`` (the GCN), ``lm/`` (LoRA merged, with its
tokenizer) and ``stage2.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Batch, Data

from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.instruction import GraphLanguageModel, TextEncoder
from bleg.language_model import LanguageModelConfig, apply_finetune_mode, hidden_size, load_language_model, merged
from bleg.texts import Description, question
from fmgnn.baselines.train_gcn import load_graphs
from fmgnn.cohort import Cohort
from fmgnn.evaluation.splits import Split
from fmgnn.graphs import GraphConfig
from fmgnn.ray_logging import quiet_report_logs
from fmgnn.train_state import TrainState, load_model_state, report_epoch, restore, seed_epoch, unwrap


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
    """One fold's stage 2; passed to every worker as ``config["spec"]``."""

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
    ids, labels, names = cohort.subject_ids(), cohort.labels(), cohort.metadata.label_names
    prompt = question(cohort.metadata.task)
    graphs = load_graphs(cohort, indices, spec.graph)
    return [Example(graph, prompt, spec.descriptions[str(ids[i])].answer(names[labels[i]]))
            for graph, i in zip(graphs, indices)]


class Collate:
    """A PyG batch of graphs plus padded token ids and answer labels."""

    def __init__(self, text_encoder: TextEncoder, seed: int) -> None:
        self.text_encoder = text_encoder
        self.generator = torch.Generator().manual_seed(seed)  # masked-LM positions

    def __call__(self, examples: list[Example]) -> dict:
        pairs = [self.text_encoder.pair(e.prompt, e.answer, self.generator) for e in examples]
        text = self.text_encoder.pad([p[0] for p in pairs], [p[1] for p in pairs])
        return {"graphs": Batch.from_data_list([e.graph for e in examples]), **text}


def answer_loss(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer | None) -> float:
    """Mean answer loss over ``loader``; trains when an optimizer is given."""
    model.train(optimizer is not None)
    total, count = 0.0, 0
    for batch in loader:
        with torch.set_grad_enabled(optimizer is not None):
            loss = model(batch["graphs"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total += loss.item() * len(batch["input_ids"])
        count += len(batch["input_ids"])
    return total / max(count, 1)


def train_instruction(config: dict) -> None:
    spec: InstructionSpec = config["spec"]
    quiet_report_logs()
    torch.manual_seed(spec.seed)
    context = ray.train.get_context()
    cohort = Cohort(spec.cohort_path)
    train_examples = make_examples(cohort, spec.split.train, spec)
    val_examples = make_examples(cohort, spec.split.val, spec)

    lm, tokenizer, kind = load_language_model(spec.lm)
    lm = apply_finetune_mode(lm, spec.lm)
    encoder = GraphTokenEncoder(GraphEncoderConfig(
        in_channels=train_examples[0].graph.num_node_features, hidden=spec.train.encoder_hidden,
        out_channels=hidden_size(lm), dropout=spec.train.encoder_dropout))
    model = GraphLanguageModel(encoder, lm, kind)
    text_encoder = TextEncoder(tokenizer, kind, spec.lm.max_length - cohort.n_rois, spec.lm.mlm_probability)

    # Ray: each worker tunes on its own shard of the training subjects.
    sampler = DistributedSampler(train_examples, num_replicas=context.get_world_size(),
                                 rank=context.get_world_rank(), shuffle=True, seed=spec.seed)
    collate = Collate(text_encoder, spec.seed)
    loader = DataLoader(train_examples, batch_size=spec.train.batch_size, sampler=sampler, collate_fn=collate)
    # Weights that start random (the GCN, an LM head the checkpoint lacked) learn at encoder_lr; the
    # pretrained LM weights (or their LoRA adapters) at the paper's lower lr.
    new_weights = set(getattr(lm, "fmgnn_new_weights", []))

    def fresh(name: str) -> bool:
        return name.startswith("encoder.") or name.removeprefix("lm.").removeprefix("base_model.model.") in new_weights

    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for n, p in trained if fresh(n)], "lr": spec.train.encoder_lr},
                                   {"params": [p for n, p in trained if not fresh(n)], "lr": spec.train.lr}],
                                  weight_decay=spec.train.weight_decay)
    model = ray.train.torch.prepare_model(model)  # Ray: DDP when there is more than one worker

    state = restore(model, optimizer)
    while not state.finished(spec.train.epochs):
        epoch = state.epoch + 1
        sampler.set_epoch(epoch)
        collate.generator.manual_seed(seed_epoch(spec.seed, epoch, context.get_world_rank()))
        train_loss = answer_loss(model, loader, optimizer)
        # The same masked positions every epoch, so that validation losses compare.
        val_loader = DataLoader(val_examples, batch_size=spec.train.batch_size, collate_fn=Collate(text_encoder, 0))
        val_loss = answer_loss(unwrap(model), val_loader, None)
        state.update(model, {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}, val_loss,
                     spec.train.patience, trainable_only=True)
        if not state.finished(spec.train.epochs):
            report_epoch(state, model, optimizer, {**state.history[-1], "done": False}, trainable_only=True)
    final_report(state, model, optimizer, tokenizer, kind, spec)


def final_report(state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokenizer: object,
                 kind: str, spec: InstructionSpec) -> None:
    """Report the last epoch with the best epoch's model exported in Hugging Face format."""
    load_model_state(model, state.best_model)
    tuned = unwrap(model)

    def export(directory: Path) -> None:
        tuned.encoder.save_pretrained(directory / "encoder")
        merged(tuned.lm).save_pretrained(directory / "lm")
        tokenizer.save_pretrained(directory / "lm")
        (directory / "stage2.json").write_text(json.dumps({
            "kind": kind, "base_lm": spec.lm.path, "finetune": spec.lm.finetune, "split": spec.split.name,
            "best_epoch": state.best_epoch, "history": state.history}, indent=2))

    report_epoch(state, model, optimizer, {**state.history[-1], "best_epoch": state.best_epoch,
                                           "history": state.history, "done": True},
                 trainable_only=True, export=export)
