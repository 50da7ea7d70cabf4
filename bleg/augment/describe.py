"""What the LLM is told about a subject: graph measures, hubs, strongest connections, network summaries.

One function over a batch of FC matrices (B, R, R), and the pipeline's Ray Data stage around it;
everything is computed from the graph and the cohort metadata. Input batches never carry the label
column: the pipeline does not read it, so it cannot reach a prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fmgnn.cohort import CohortMetadata, scan_fc
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


Batch = dict[str, np.ndarray]
INPUT_COLUMNS = ["scan_id", "fc_triu", "timeseries", "n_timepoints", "age", "sex", "site"]
DEMOGRAPHICS = ("age", "sex", "site")


def batch_fc(batch: Batch, n_rois: int) -> np.ndarray:
    """FC (B, R, R) of a batch: the stored triangle, or Pearson FC of the time series."""
    out = np.empty((len(batch["scan_id"]), n_rois, n_rois), dtype=np.float32)
    for i, (sid, triu) in enumerate(zip(batch["scan_id"], batch["fc_triu"])):
        # A missing triangle arrives as None, or as NaN when Ray Data typed an all-null column as float.
        present = isinstance(triu, (list, np.ndarray)) and len(triu) > 0
        out[i] = scan_fc(triu if present else None, batch["timeseries"][i], n_rois, f"scan {sid}")
    return out


def _clean(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def describe_stage(batch: Batch, metadata: CohortMetadata, config: DescribeConfig) -> Batch:
    descriptions = describe_batch(batch_fc(batch, metadata.n_rois), metadata, config)
    demographics = [{k: _clean(batch[k][i]) for k in DEMOGRAPHICS if k in batch} for i in range(len(descriptions))]
    return {
        "scan_id": batch["scan_id"],
        "description": np.array([json.dumps(d) for d in descriptions], dtype=object),
        "demographics": np.array([json.dumps(d) for d in demographics], dtype=object),
    }


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
