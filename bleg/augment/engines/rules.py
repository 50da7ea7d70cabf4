"""A rules engine: the answer JSON written from the measures by fixed rules, without any model.

For offline runs and for tests of everything around the LLM. Its answers depend only on the
graph description (never on the label), and rows say ``engine = "rules"``.
"""

from __future__ import annotations

import json
import time

from bleg.augment.engines.base import EngineConfig, Generation, Request


def _level(value: float, low: float, high: float) -> str:
    return "low" if value < low else "high" if value > high else "moderate"


class RulesEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, requests: list[Request]) -> list[Generation]:
        out = []
        for request in requests:
            start = time.perf_counter()
            text = json.dumps(self.answer(request.description))
            out.append(Generation(text, self.count_tokens(request.system + request.prompt), len(text.split()),
                                  time.perf_counter() - start))
        return out

    @staticmethod
    def answer(d: dict) -> dict:
        hubs = ", ".join(h["region"] for h in d["hubs"][:3])
        top = d["strongest_connections"][0] if d["strongest_connections"] else None
        features = [
            f"{_level(d['global_efficiency'], 0.35, 0.5)} global integration (efficiency {d['global_efficiency']:.3f}, "
            f"path length {d['characteristic_path_length']:.2f})",
            f"{_level(d['clustering'], 0.35, 0.55)} local segregation (clustering {d['clustering']:.3f})",
            f"{_level(d['modularity'], 0.3, 0.45)} modularity (Q {d['modularity']:.3f}, {d['n_communities']} modules)",
        ]
        if hubs:
            features.append(f"hubs in {hubs}")
        if top:
            features.append(f"strongest coupling {top['a']}-{top['b']} (r {top['r']})")
        if d["networks"]:
            strongest = max(d["networks"], key=d["networks"].get)
            weakest = min(d["networks"], key=d["networks"].get)
            features.append(f"within-network coupling highest in {strongest} and lowest in {weakest}")
        if d["disconnected_pair_fraction"] > 0:
            features.append(f"{d['disconnected_pair_fraction']:.1%} of region pairs disconnected")
        balance = "integration" if d["global_efficiency"] >= d["local_efficiency"] else "segregation"
        conclusion = (f"The network leans towards {balance}, with {_level(d['modularity'], 0.3, 0.45)} modular "
                      f"structure organised around {hubs or 'no clear hubs'}.")
        return {"key_features": features, "conclusion": conclusion}
