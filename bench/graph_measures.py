"""Graph measures: fmgnn's batched implementation against networkx on the same graphs.

    python bench/graph_measures.py --subjects 256 --regions 90

Both compute degree, clustering, local and global efficiency, characteristic path length (over
connected pairs) and modularity of a community partition (networkx: Louvain; fmgnn: spectral +
greedy refinement), on AAL-sized graphs at 12% density from synthetic FC.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmgnn.graphs import GraphConfig, edge_mask  # noqa: E402
from fmgnn.measures import graph_measures  # noqa: E402
from fmgnn.sources.synthetic import SyntheticCohort, SyntheticConfig  # noqa: E402


def networkx_measures(g: nx.Graph) -> tuple:
    lengths = dict(nx.all_pairs_shortest_path_length(g))
    finite = [d for i in lengths for j, d in lengths[i].items() if i != j]
    communities = nx.community.louvain_communities(g, seed=0)
    return (dict(g.degree()), nx.clustering(g), nx.local_efficiency(g), nx.global_efficiency(g),
            float(np.mean(finite)), nx.community.modularity(g, communities))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    cohort = SyntheticCohort(SyntheticConfig(n_subjects=args.subjects, store="fc"))
    fc = np.stack([cohort.subject(i).fc for i in range(args.subjects)])
    adjacency = edge_mask(torch.as_tensor(fc), GraphConfig(self_loops=False)).numpy()
    adjacency &= ~np.eye(fc.shape[-1], dtype=bool)

    start = time.perf_counter()
    ours = [graph_measures(adjacency[i:i + args.batch], fc[i:i + args.batch])
            for i in range(0, args.subjects, args.batch)]
    fmgnn_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = [networkx_measures(nx.from_numpy_array(a.astype(np.int8))) for a in adjacency]
    networkx_s = time.perf_counter() - start

    q_ours = np.concatenate([m.modularity for m in ours])
    q_louvain = np.array([t[5] for t in theirs])
    eff_ours = np.concatenate([m.global_efficiency for m in ours])
    eff_nx = np.array([t[3] for t in theirs])
    print(f"{'impl':>10} {'subjects':>9} {'seconds':>8} {'subjects/s':>11}")
    print(f"{'fmgnn':>10} {args.subjects:>9} {fmgnn_s:>8.2f} {args.subjects / fmgnn_s:>11.1f}")
    print(f"{'networkx':>10} {args.subjects:>9} {networkx_s:>8.2f} {args.subjects / networkx_s:>11.1f}")
    print(f"speed-up {networkx_s / fmgnn_s:.1f}x; max |global efficiency difference| "
          f"{np.abs(eff_ours - eff_nx).max():.1e}; modularity fmgnn/Louvain mean {np.mean(q_ours / q_louvain):.3f} "
          f"(min {np.min(q_ours / q_louvain):.3f})")


if __name__ == "__main__":
    main()
