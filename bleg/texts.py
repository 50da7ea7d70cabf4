"""The texts of stages 2 and 3: the question, the answer, and each subject's LLM description.

Stage 2's answer is ``"{key_features}. {conclusion}. Thus, the result is {label_name}."``
(METHODS.md); it holds the label, so it is built for training subjects only. The teacher of
stage 3 reads the description without the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from fmgnn.config import LocalPath
from bleg.augment.store import read_augmentations
from fmgnn.cohort import CohortError

QUESTION = "This is a graph for {task}. Please give a detailed summary of the input graph."


@dataclass
class Description:
    key_features: list[str]
    conclusion: str

    def text(self) -> str:
        features = "; ".join(f.rstrip(". ") for f in self.key_features)
        return f"{features}. {self.conclusion.rstrip('. ')}."

    def answer(self, label_name: str) -> str:
        return f"{self.text()} Thus, the result is {label_name}."


@dataclass
class TextsConfig:
    """Args:
        output: Augmentation output folder (``fmgnn augment``'s ``output``).
        model: Use the rows of this model only; None: the folder must hold one model's rows.
        prompt_version: Use the rows of this prompt version only (e.g. ``v2-0332ebf43b``, as the rows and the
            augmentation summary name it); None: the folder must hold one version's rows.
        drop_missing: Leave out subjects without a valid description instead of failing.
    """

    output: LocalPath = ""
    model: str | None = None
    prompt_version: str | None = None
    drop_missing: bool = False


def question(task: str) -> str:
    return QUESTION.format(task=task)


def load_descriptions(config: TextsConfig) -> dict[str, Description]:
    """Valid descriptions by subject id (error rows are left out)."""
    if not config.output:
        raise CohortError("texts.output: give the augmentation output folder (fmgnn augment ... output=...)")
    table = read_augmentations(config.output)
    for column, chosen in (("model", config.model), ("prompt_version", config.prompt_version)):
        if chosen is not None:
            table = table.filter(pc.equal(table[column], chosen))
        values = sorted(set(table.column(column).to_pylist()))
        if len(values) != 1:
            raise CohortError(f"texts.output: {config.output} holds rows of {len(values)} {column}s {values}; "
                              f"choose one with texts.{column}=...")
    table = table.filter(pc.is_null(table["error"]))
    return {row["scan_id"]: Description(row["key_features"], row["conclusion"])
            for row in table.select(["scan_id", "key_features", "conclusion"]).to_pylist()}


def check_coverage(descriptions: dict[str, Description], scan_ids: np.ndarray, indices: list[int],
                   config: TextsConfig) -> list[int]:
    """``indices`` whose subjects have a description; missing ones fail unless ``drop_missing``."""
    missing = {int(i) for i in indices if str(scan_ids[i]) not in descriptions}
    if missing and not config.drop_missing:
        names = ", ".join(str(scan_ids[i]) for i in sorted(missing)[:20]) + (" ..." if len(missing) > 20 else "")
        raise CohortError(f"texts.output: {config.output} has no valid description for {len(missing)} subject(s): "
                          f"{names}. Rerun `fmgnn augment ... retry_failed=true`, or set texts.drop_missing=true")
    return [int(i) for i in indices if int(i) not in missing]
