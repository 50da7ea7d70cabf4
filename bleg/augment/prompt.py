"""The prompt: a versioned template filled from a subject's description, never from its label.

``PROMPT_VERSION`` is the template's name plus a hash of its text, stored with every output row,
so a change to the wording is a new version and is regenerated, not mixed with old answers.
When a prompt is longer than the model's context allows, details are dropped in a fixed order
(the region list, then connections, hubs and networks) with a warning, never a crash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from fmgnn.cohort import CohortMetadata

SYSTEM = (
    "You are a neuroscientist who reads functional brain networks. Answer with JSON only: "
    '{"key_features": [short strings], "conclusion": "one or two sentences"}.'
)

TEMPLATE = """Dataset: {dataset}. Task: {task}.
Atlas: {atlas} with {n_regions} regions{region_list}.
{demographics}The subject's functional connectivity graph keeps the strongest {density:.0%} of correlations \
({n_edges} edges).
Whole-graph measures: global efficiency {global_efficiency:.3f}, mean local efficiency {local_efficiency:.3f}, \
mean clustering {clustering:.3f}, characteristic path length {characteristic_path_length:.2f} hops \
({disconnected_pair_fraction:.1%} of region pairs disconnected), modularity Q {modularity:.3f} with \
{n_communities} communities of sizes {community_sizes}.
{hubs}{connections}{networks}Describe the key features of this brain network and conclude what they suggest about \
its organisation. Reply with JSON only."""

# The prompt's instructions (not its facts): an answer that repeats them is rejected (bleg.augment.quality).
INSTRUCTIONS = [SYSTEM, TEMPLATE.rsplit("}", 1)[1]]

PROMPT_VERSION = "v1-" + hashlib.sha256((SYSTEM + TEMPLATE).encode()).hexdigest()[:10]

# What is dropped, in order, when a prompt does not fit: (field, kept items at that step).
SHORTENING_STEPS = [("region_list", 0), ("connections", 3), ("hubs", 3), ("networks", 0), ("connections", 0),
                    ("hubs", 0)]


def _demographics(demographics: dict[str, Any]) -> str:
    parts = [f"{k} {v}" for k, v in demographics.items() if v is not None]
    return f"Subject demographics: {', '.join(parts)}.\n" if parts else ""


def render_prompt(description: dict[str, Any], metadata: CohortMetadata, demographics: dict[str, Any],
                  limits: dict[str, int] | None = None) -> str:
    """The user message for one subject; ``limits`` caps list lengths (see ``SHORTENING_STEPS``)."""
    limits = limits or {}
    hubs = description["hubs"][: limits.get("hubs", len(description["hubs"]))]
    connections = description["strongest_connections"][: limits.get("connections", 10**6)]
    networks = description["networks"] if limits.get("networks", 1) else {}
    region_list = "" if limits.get("region_list", 1) == 0 else ": " + ", ".join(metadata.roi_names)
    return TEMPLATE.format(
        dataset=metadata.name, task=metadata.task, atlas=metadata.atlas, region_list=region_list,
        demographics=_demographics(demographics),
        hubs=("Hub regions (degree, strength): " + "; ".join(
            f"{h['region']} ({h['degree']}, {h['strength']})" for h in hubs) + ".\n") if hubs else "",
        connections=("Strongest connections: " + "; ".join(
            f"{c['a']}-{c['b']} r={c['r']}" for c in connections) + ".\n") if connections else "",
        networks=("Mean within-network correlation: " + json.dumps(networks) + ".\n") if networks else "",
        **{k: description[k] for k in (
            "n_regions", "density", "n_edges", "global_efficiency", "local_efficiency", "clustering",
            "characteristic_path_length", "disconnected_pair_fraction", "modularity", "n_communities",
            "community_sizes")},
    )


def fit_prompt(description: dict[str, Any], metadata: CohortMetadata, demographics: dict[str, Any],
               count_tokens: Callable[[str], int], max_prompt_tokens: int) -> tuple[str, int, str | None]:
    """The fullest prompt within ``max_prompt_tokens``: (prompt, token count, warning or None)."""
    limits: dict[str, int] = {}
    prompt = render_prompt(description, metadata, demographics, limits)
    tokens = count_tokens(SYSTEM + prompt)
    dropped = []
    for field_name, keep in SHORTENING_STEPS:
        if tokens <= max_prompt_tokens:
            break
        limits[field_name] = keep
        dropped.append(f"{field_name}->{keep}")
        prompt = render_prompt(description, metadata, demographics, limits)
        tokens = count_tokens(SYSTEM + prompt)
    warning = None
    if dropped:
        warning = f"prompt shortened to fit {max_prompt_tokens} tokens ({', '.join(dropped)})"
        if tokens > max_prompt_tokens:
            warning += f"; still {tokens} tokens"
    return prompt, tokens, warning
