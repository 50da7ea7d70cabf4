"""The answer the LLM must give, and its validation.

Answers are JSON ``{"key_features": [str, ...], "conclusion": str}`` (METHODS.md, stage 1).
``ANSWER_SCHEMA`` is what guided decoding enforces where the engine supports it; ``parse_answer``
checks every answer whatever the engine, so an invalid answer is always caught, never stored as valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "key_features": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 12},
        "conclusion": {"type": "string"},
    },
    "required": ["key_features", "conclusion"],
    "additionalProperties": False,
}


@dataclass
class Answer:
    key_features: list[str] | None
    conclusion: str | None
    error: str | None


def parse_answer(text: str) -> Answer:
    """The first JSON object in ``text`` (code fences and surrounding prose are tolerated), validated."""
    start = text.find("{")
    if start < 0:
        return Answer(None, None, "no JSON object in the output")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        return Answer(None, None, f"invalid or truncated JSON: {err.msg} at character {err.pos}")
    if not isinstance(obj, dict):
        return Answer(None, None, "the JSON value is not an object")
    features, conclusion = obj.get("key_features"), obj.get("conclusion")
    extra = sorted(set(obj) - {"key_features", "conclusion"})
    if not isinstance(features, list) or not features or not all(isinstance(f, str) and f.strip() for f in features):
        return Answer(None, None, "key_features must be a non-empty list of non-empty strings")
    if not isinstance(conclusion, str) or not conclusion.strip():
        return Answer(None, None, "conclusion must be a non-empty string")
    if extra:
        return Answer(None, None, f"unexpected keys {extra}")
    return Answer([f.strip() for f in features], conclusion.strip(), None)
