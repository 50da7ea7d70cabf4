"""What the LLM is told about a subject: graph measures, hubs, strongest connections, network summaries.

One function over a batch of FC matrices (B, R, R); everything is computed from the graph and
the cohort metadata. The label is never an input here, so it cannot reach the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fmgnn.cohort import CohortMetadata
from fmgnn.graphs import GraphConfig, edge_mask
from fmgnn.measures import graph_measures


@dataclass
class DescribeConfig:
    """Args:
        graph: How FC becomes the graph the measures are computed on (self-loops are ignored).
        n_hubs: Regions listed as hubs (highest degree, then strength).
        n_connections: Strongest edges listed by |r|.
        max_communities: Largest number of modules the community search tries.
    """

    graph: GraphConfig = field(default_factory=GraphConfig)
    n_hubs: int = 5
    n_connections: int = 8
    max_communities: int = 8


def describe_batch(fc: np.ndarray, metadata: CohortMetadata, config: DescribeConfig) -> list[dict[str, Any]]:
    """One description dict per subject of ``fc`` (B, R, R)."""
    fc_t = torch.as_tensor(np.asarray(fc), dtype=torch.float32)
    adjacency = edge_mask(fc_t, config.graph).numpy() & ~np.eye(fc_t.shape[-1], dtype=bool)  # (B, R, R)
    m = graph_measures(adjacency, fc, config.max_communities)
    names = metadata.roi_names
    r = len(names)
    rows, cols = np.triu_indices(r, 1)
    descriptions = []
    for b in range(adjacency.shape[0]):  # per-subject formatting; the measures above are batched
        hub_order = np.lexsort((-m.strength[b], -m.degree[b]))[: config.n_hubs]
        edges = adjacency[b, rows, cols]
        edge_r = fc[b, rows, cols][edges]
        strongest = np.argsort(-np.abs(edge_r), kind="stable")[: config.n_connections]
        pairs = np.flatnonzero(edges)[strongest]
        sizes = np.bincount(m.communities[b])
        descriptions.append({
            "n_regions": r,
            "n_edges": int(edges.sum()),
            "density": float(edges.mean()),
            "global_efficiency": float(m.global_efficiency[b]),
            "local_efficiency": float(m.local_efficiency[b].mean()),
            "clustering": float(m.clustering[b].mean()),
            "characteristic_path_length": float(m.characteristic_path_length[b]),
            "disconnected_pair_fraction": float(m.disconnected_pair_fraction[b]),
            "modularity": float(m.modularity[b]),
            "n_communities": int(len(sizes)),
            "community_sizes": sorted(sizes.tolist(), reverse=True),
            "hubs": [{"region": names[i], "degree": int(m.degree[b, i]), "strength": round(float(m.strength[b, i]), 3)}
                     for i in hub_order],
            "strongest_connections": [
                {"a": names[rows[p]], "b": names[cols[p]], "r": round(float(fc[b, rows[p], cols[p]]), 3)}
                for p in pairs
            ],
            "networks": _network_summaries(fc[b], metadata.networks),
        })
    return descriptions


def _network_summaries(fc: np.ndarray, networks: dict[str, list[int]]) -> dict[str, float]:
    """Mean within-network correlation per network (only networks of two or more regions)."""
    out = {}
    for name, members in networks.items():
        if len(members) > 1:
            block = fc[np.ix_(members, members)]
            out[name] = round(float(block[np.triu_indices(len(members), 1)].mean()), 3)
    return out
