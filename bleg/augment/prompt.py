"""The prompt: a versioned template filled from a subject's description, never from its label.

A prompt's version is the template's name plus a hash of its text, stored with every output row, so a
change to the wording is a new version and is regenerated, not mixed with old answers. When a prompt
is longer than the model's context allows, details are dropped in a fixed order (the region list, then
connections, hubs and networks) with a warning, never a crash.

- ``v1``: the facts as sentences, the answer's shape in the system message.
- ``v2``: the facts as short lines and a worked example answer for another subject. SmolLM2-135M
  copies the example: 31 of 32 NMDA answers were rejected as ``copies_prompt`` (bench/RESULTS.md).
- ``v3`` (the default): the facts as short lines, no example, the answer's shape and "name this
  subject's own hubs, connections and measures" in the system message. On the same 32 NMDA subjects
  SmolLM2-135M had 9% of answers rejected (v1: 31%) and 79% distinct key-feature lists (v1: 36%).
An answer that copies the instructions or the example is rejected (bleg.augment.quality).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fmgnn.cohort import CohortMetadata
from fmgnn.errors import InputError


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt version: the system message, the template, how its lists are introduced, and what of it
    an answer must not repeat (``instructions``: the wording that is not the subject's facts)."""

    name: str
    system: str
    template: str
    instructions: tuple[str, ...]
    demographics_prefix: str
    hubs_prefix: str
    connections_prefix: str
    networks_prefix: str
    list_end: str

    @property
    def version(self) -> str:
        return f"{self.name}-" + hashlib.sha256((self.system + self.template).encode()).hexdigest()[:10]


V1_SYSTEM = (
    "You are a neuroscientist who reads functional brain networks. Answer with JSON only: "
    '{"key_features": [short strings], "conclusion": "one or two sentences"}.'
)
V1_INSTRUCTION = ("Describe the key features of this brain network and conclude what they suggest about "
                  "its organisation. Reply with JSON only.")
V1 = PromptTemplate(
    name="v1", system=V1_SYSTEM,
    template="""Dataset: {dataset}. Task: {task}.
Atlas: {atlas} with {n_regions} regions{region_list}.
{demographics}The subject's functional connectivity graph keeps the strongest {density:.0%} of correlations \
({n_edges} edges).
Whole-graph measures: global efficiency {global_efficiency:.3f}, mean local efficiency {local_efficiency:.3f}, \
mean clustering {clustering:.3f}, characteristic path length {characteristic_path_length:.2f} hops \
({disconnected_pair_fraction:.1%} of region pairs disconnected), modularity Q {modularity:.3f} with \
{n_communities} communities of sizes {community_sizes}.
{hubs}{connections}{networks}""" + V1_INSTRUCTION,
    instructions=(V1_SYSTEM, V1_INSTRUCTION), demographics_prefix="Subject demographics: ",
    hubs_prefix="Hub regions (degree, strength): ", connections_prefix="Strongest connections: ",
    networks_prefix="Mean within-network correlation: ", list_end=".\n",
)

V2_SYSTEM = ("You describe one subject's functional brain network from its measured facts. Answer with one "
             "JSON object in the form of the example, about this subject's own facts.")
V2_EXAMPLE = ('{"key_features": ["hubs in Insula_R, Cingulum_Mid_L and Precentral_L", "strongest coupling '
              'Precuneus_L-Precuneus_R (r 0.91)", "modularity Q 0.381 with 4 communities"], "conclusion": '
              '"An integrated network (global efficiency 0.412) organised around insular and cingulate hubs."}')
V2_INSTRUCTION = "Answer for this subject, naming its own hubs, connections and measures:"
V2 = PromptTemplate(
    name="v2", system=V2_SYSTEM,
    template="""Dataset: {dataset}. Task: {task}. Atlas: {atlas}, {n_regions} regions{region_list}.

Example, for another subject:
- global efficiency 0.412; mean local efficiency 0.655; clustering 0.471; path length 2.71 hops
- modularity Q 0.381, 4 communities
- hubs: Insula_R, Cingulum_Mid_L, Precentral_L
- strongest connection: Precuneus_L-Precuneus_R r=0.91
Answer: """ + V2_EXAMPLE.replace("{", "{{").replace("}", "}}") + """

This subject:
{demographics}- {n_edges} edges (the strongest {density:.0%} of correlations)
- global efficiency {global_efficiency:.3f}; mean local efficiency {local_efficiency:.3f}; clustering \
{clustering:.3f}; path length {characteristic_path_length:.2f} hops
- modularity Q {modularity:.3f}, {n_communities} communities of sizes {community_sizes}
{hubs}{connections}{networks}""" + V2_INSTRUCTION,
    instructions=(V2_SYSTEM, V2_INSTRUCTION, V2_EXAMPLE), demographics_prefix="- demographics: ",
    hubs_prefix="- hubs (degree, strength): ", connections_prefix="- strongest connections: ",
    networks_prefix="- mean within-network correlation: ", list_end="\n",
)

V3_SYSTEM = ("You describe one subject's functional brain network from its measured facts. Answer with JSON "
             'only: {"key_features": [...], "conclusion": "..."}, naming this subject\'s own hubs, connections '
             "and measures.")
V3 = PromptTemplate(
    name="v3", system=V3_SYSTEM,
    template="""Dataset: {dataset}. Task: {task}. Atlas: {atlas}, {n_regions} regions{region_list}.
Facts of this subject:
{demographics}- {n_edges} edges (the strongest {density:.0%} of correlations)
- global efficiency {global_efficiency:.3f}; mean local efficiency {local_efficiency:.3f}; clustering \
{clustering:.3f}; path length {characteristic_path_length:.2f} hops
- modularity Q {modularity:.3f}, {n_communities} communities of sizes {community_sizes}
{hubs}{connections}{networks}""" + V2_INSTRUCTION,
    instructions=(V3_SYSTEM, V2_INSTRUCTION), demographics_prefix="- demographics: ",
    hubs_prefix="- hubs (degree, strength): ", connections_prefix="- strongest connections: ",
    networks_prefix="- mean within-network correlation: ", list_end="\n",
)

PROMPTS = {template.name: template for template in (V1, V2, V3)}
DEFAULT_PROMPT = "v3"

# What is dropped, in order, when a prompt does not fit: (field, kept items at that step).
SHORTENING_STEPS = [("region_list", 0), ("connections", 3), ("hubs", 3), ("networks", 0), ("connections", 0),
                    ("hubs", 0)]


def get_prompt(name: str) -> PromptTemplate:
    if name not in PROMPTS:
        raise InputError(f"prompt: {name!r} is not one of {sorted(PROMPTS)}")
    return PROMPTS[name]


def render_prompt(description: dict[str, Any], metadata: CohortMetadata, demographics: dict[str, Any],
                  limits: dict[str, int] | None = None, prompt: PromptTemplate = PROMPTS[DEFAULT_PROMPT]) -> str:
    """The user message for one subject; ``limits`` caps list lengths (see ``SHORTENING_STEPS``)."""
    limits = limits or {}
    hubs = description["hubs"][: limits.get("hubs", len(description["hubs"]))]
    connections = description["strongest_connections"][: limits.get("connections", 10**6)]
    networks = description["networks"] if limits.get("networks", 1) else {}
    region_list = "" if limits.get("region_list", 1) == 0 else ": " + ", ".join(metadata.roi_names)
    shown = [f"{k} {v}" for k, v in demographics.items() if v is not None]
    end = prompt.list_end
    return prompt.template.format(
        dataset=metadata.name, task=metadata.task, atlas=metadata.atlas, region_list=region_list,
        demographics=f"{prompt.demographics_prefix}{', '.join(shown)}{end}" if shown else "",
        hubs=(prompt.hubs_prefix + "; ".join(f"{h['region']} ({h['degree']}, {h['strength']})" for h in hubs)
              + end) if hubs else "",
        connections=(prompt.connections_prefix + "; ".join(f"{c['a']}-{c['b']} r={c['r']}" for c in connections)
                     + end) if connections else "",
        networks=(prompt.networks_prefix + (json.dumps(networks) if prompt.name == "v1" else ", ".join(
            f"{name} {value}" for name, value in networks.items())) + end) if networks else "",
        **{k: description[k] for k in (
            "n_regions", "density", "n_edges", "global_efficiency", "local_efficiency", "clustering",
            "characteristic_path_length", "disconnected_pair_fraction", "modularity", "n_communities",
            "community_sizes")},
    )


def fit_prompt(description: dict[str, Any], metadata: CohortMetadata, demographics: dict[str, Any],
               count_tokens: Callable[[str], int], max_prompt_tokens: int,
               prompt: PromptTemplate = PROMPTS[DEFAULT_PROMPT]) -> tuple[str, int, str | None]:
    """The fullest prompt within ``max_prompt_tokens``: (prompt, token count, warning or None)."""
    limits: dict[str, int] = {}
    text = render_prompt(description, metadata, demographics, limits, prompt)
    tokens = count_tokens(prompt.system + text)
    dropped = []
    for field_name, keep in SHORTENING_STEPS:
        if tokens <= max_prompt_tokens:
            break
        limits[field_name] = keep
        dropped.append(f"{field_name}->{keep}")
        text = render_prompt(description, metadata, demographics, limits, prompt)
        tokens = count_tokens(prompt.system + text)
    warning = None
    if dropped:
        warning = f"prompt shortened to fit {max_prompt_tokens} tokens ({', '.join(dropped)})"
        if tokens > max_prompt_tokens:
            warning += f"; still {tokens} tokens"
    return text, tokens, warning
