"""Teacher targets of stage 3: one pooled LM hidden vector per subject, cached in Parquet.

The tuned LM reads ``[graph tokens][the subject's description][question]`` (no label) and its last
hidden states are pooled into h_LM:

- ``last``: the last text token (what a causal LM has read everything by);
- ``mean``: the mean over every position, graph tokens included;
- ``cls``: a CLS token appended at the end (the tokenizer's CLS, else its EOS), as in the official
  code, whose appended position is never trained.

Targets are computed for a fold's training and validation subjects only; the test subjects'
texts are never read. The cache is keyed by subject, split and model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch_geometric.data import Batch, Data

from bleg.instruction import GraphLanguageModel, TextEncoder
from fmgnn.io import atomic_path

Pooling = Literal["last", "mean", "cls"]

TARGET_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("split", pa.string()), ("model", pa.string()), ("pooling", pa.string()),
    ("uses_graph", pa.bool_()), ("vector", pa.list_(pa.float32())),
])


@torch.no_grad()
def teacher_vectors(model: GraphLanguageModel, text_encoder: TextEncoder, graph_batches: Iterable[Batch] | None,
                    prompts: list[str], pooling: Pooling, batch_size: int = 8,
                    device: torch.device | None = None, precision: str = "fp32") -> np.ndarray:
    """h_LM for every prompt (N, d), computed on ``device`` (default: the CPU), in bf16 autocast with
    ``precision="bf16"``. ``graph_batches`` holds the prompts' graphs in batches of ``batch_size``, in the
    prompts' order (``PartGraphs.batches``, which builds a streamed part a chunk at a time, or ``batched``);
    with None the LM reads the text alone. Vectors come back as float32."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    tokenizer = text_encoder.tokenizer
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id
    vectors = []
    graph_batches = iter(graph_batches) if graph_batches is not None else None
    for start in range(0, len(prompts), batch_size):
        room = text_encoder.max_text_length - 1  # keep a place for the CLS token
        ids = [text_encoder.prompt_ids(p)[:room] for p in prompts[start:start + batch_size]]
        if pooling == "cls":
            ids = [s + [cls_id] for s in ids]
        text = {k: v.to(device) for k, v in text_encoder.pad(ids).items()}
        batch = next(graph_batches).to(device) if graph_batches is not None else None
        with autocast:
            hidden, mask = model.last_hidden(batch, text["input_ids"], text["attention_mask"])  # (B, S, d), (B, S)
        if pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            vectors.append((hidden * weights).sum(1) / weights.sum(1))
        else:  # last and cls: the last real position (right padding)
            last = mask.sum(1) - 1  # (B,)
            vectors.append(hidden[torch.arange(len(ids), device=device), last])
    return torch.cat(vectors).float().cpu().numpy()


def batched(graphs: Sequence[Data], batch_size: int) -> list[Batch]:
    """``graphs`` in batches of ``batch_size``, for ``teacher_vectors``."""
    return [Batch.from_data_list(list(graphs[i:i + batch_size])) for i in range(0, len(graphs), batch_size)]


def write_targets(path: Path, scan_ids: list[str], vectors: np.ndarray, split: str, model: str,
                  pooling: Pooling, uses_graph: bool) -> None:
    n = len(scan_ids)
    table = pa.table({
        "scan_id": scan_ids, "split": [split] * n, "model": [model] * n, "pooling": [pooling] * n,
        "uses_graph": [uses_graph] * n, "vector": [v.astype(np.float32) for v in vectors],
    }, schema=TARGET_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_targets(path: Path, split: str, model: str, pooling: Pooling) -> dict[str, np.ndarray] | None:
    """Cached targets of this split, model and pooling; None when absent or made otherwise."""
    if not path.is_file():
        return None
    table = pq.read_table(path)
    key = {"split": split, "model": model, "pooling": pooling}
    if table.num_rows == 0 or any(set(table.column(k).to_pylist()) != {v} for k, v in key.items()):
        return None
    key_column = "scan_id" if "scan_id" in table.column_names else "subject_id"  # before cohort format 2
    return {s: np.asarray(v, dtype=np.float32)
            for s, v in zip(table.column(key_column).to_pylist(), table.column("vector").to_pylist())}
