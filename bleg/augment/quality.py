"""Answer quality beyond the JSON shape: answers that copy the prompt, loop, say nothing of the subject,
or misstate its measures are rejected with a named reason, retried, and kept as error rows if they stay bad.

A small model's valid JSON is often junk: a conclusion that is the instruction ("One or two sentences"),
one word repeated to the token limit, or the same two generic features for every subject. Each check
returns ``"<reason>: <detail>"`` or None; the reason names (``REASONS``) are what the augmentation
summary counts.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bleg.augment.answer import Answer

REASONS = ("copies_prompt", "repetition", "generic", "wrong_measure")
INVALID = "invalid_answer"  # every other error row: no answer of the right shape, or the engine failed

# A measure the prompt states, the words an answer would name it by, and the description's key.
MEASURES = {
    "global efficiency": "global_efficiency", "local efficiency": "local_efficiency",
    "clustering": "clustering", "path length": "characteristic_path_length", "modularity": "modularity",
}
MEASURE_WORDS = ("efficiency", "clustering", "path length", "modularity", "hub", "degree", "strength",
                 "communit", "module", "density")


@dataclass
class QualityConfig:
    """Args:
        check: Reject low-quality answers (off: only the JSON shape is checked).
        max_word_repeats: Most times one word of 4 letters or more may occur in an answer (the rules
            engine's factual answers on NMDA repeat a region's name up to 7 times; a loop to the token
            limit repeats its word dozens of times).
        ngram: Words per run for the repeated-run check.
        max_ngram_repeats: Most times one run of ``ngram`` words may occur.
        copy_words: An answer sharing a run of this many words with the instructions copies them; a
            field that is, word for word, a phrase of the instructions (2 words or more) does too.
        measure_tolerance: A measure the answer states may differ from the subject's by this share of
            it (or 0.01, whichever is larger).
    """

    check: bool = True
    max_word_repeats: int = 10
    ngram: int = 3
    max_ngram_repeats: int = 5
    copy_words: int = 5
    measure_tolerance: float = 0.1


def words(text: str) -> list[str]:
    """Lower-case words and numbers; an atlas name such as ``Frontal_Mid_Orb_R`` is one word (a subject's
    hubs are named in several fields, and split they repeat as n-grams)."""
    return re.findall(r"[a-z0-9]+(?:_[a-z0-9]+)*(?:\.[0-9]+)?", text.lower())


def answer_text(answer: Answer) -> str:
    return " ".join([*(answer.key_features or []), answer.conclusion or ""])


def copies_prompt(answer: Answer, instructions: list[str], config: QualityConfig) -> str | None:
    instruction_words = [words(text) for text in instructions]
    joined = [" ".join(w) for w in instruction_words]
    for field in [*(answer.key_features or []), answer.conclusion or ""]:
        field_words = words(field)
        if len(field_words) >= 2 and any(f" {' '.join(field_words)} " in f" {text} " for text in joined):
            return f"copies_prompt: {field!r} is a phrase of the instructions"
    runs = {" ".join(w[i:i + config.copy_words]) for w in instruction_words for i in range(len(w) - config.copy_words + 1)}
    ours = words(answer_text(answer))
    for i in range(len(ours) - config.copy_words + 1):
        run = " ".join(ours[i:i + config.copy_words])
        if run in runs:
            return f"copies_prompt: {run!r} is copied from the instructions"
    return None


def repetition(answer: Answer, config: QualityConfig) -> str | None:
    ours = words(answer_text(answer))
    long = [w for w in ours if len(w) >= 4 and not w[0].isdigit()]
    if long:
        word, count = Counter(long).most_common(1)[0]
        if count > config.max_word_repeats:
            return f"repetition: {word!r} occurs {count} times (at most {config.max_word_repeats})"
    grams = Counter(" ".join(ours[i:i + config.ngram]) for i in range(len(ours) - config.ngram + 1))
    if grams:
        run, count = grams.most_common(1)[0]
        if count > config.max_ngram_repeats:
            return f"repetition: {run!r} occurs {count} times (at most {config.max_ngram_repeats})"
    return None


def region_word(name: str) -> str:
    """The word an answer would name an atlas region by: ``Frontal_Sup_Orb_L`` -> ``frontal``."""
    parts = words(name.replace("_", " "))
    return parts[0] if parts else name.lower()


def subject_terms(description: dict[str, Any]) -> set[str]:
    """What would make an answer about this subject: its hubs, the regions of its strongest connections,
    its networks."""
    regions = [h["region"] for h in description.get("hubs", [])]
    regions += [c[k] for c in description.get("strongest_connections", []) for k in ("a", "b")]
    return {region_word(r) for r in regions if len(region_word(r)) >= 4} | \
        {n.lower() for n in description.get("networks", {})}


def generic(answer: Answer, description: dict[str, Any]) -> str | None:
    text = " " + " ".join(words(answer_text(answer))) + " "
    if any(f" {term}" in text for term in subject_terms(description)) or any(m in text for m in MEASURE_WORDS):
        return None
    return "generic: names no hub, connected region, network or measure of this subject"


def wrong_measure(answer: Answer, description: dict[str, Any], config: QualityConfig) -> str | None:
    text = answer_text(answer).lower()
    for name, key in MEASURES.items():
        if key not in description:
            continue
        for match in re.finditer(rf"{name}[^0-9.]{{0,25}}(-?[0-9]*\.?[0-9]+)", text):
            stated, actual = float(match.group(1)), float(description[key])
            if abs(stated - actual) > max(0.01, config.measure_tolerance * abs(actual)):
                return f"wrong_measure: states {name} {stated:g}, the subject's is {actual:g}"
    return None


def check_quality(answer: Answer, description: dict[str, Any], instructions: list[str],
                  config: QualityConfig) -> str | None:
    """The first failed check of a well-formed answer, as ``"<reason>: <detail>"``, or None."""
    if not config.check or answer.error is not None:
        return None
    return (copies_prompt(answer, instructions, config) or repetition(answer, config)
            or generic(answer, description) or wrong_measure(answer, description, config))


def reason_of(error: str | None) -> str | None:
    """The named reason of an error row (``invalid_answer`` for an answer of the wrong shape or none)."""
    if error is None:
        return None
    head = error.split(":", 1)[0]
    return head if head in REASONS else INVALID
