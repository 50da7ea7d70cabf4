"""Vectorised graph measures against networkx on random graphs."""

import networkx as nx
import numpy as np
import pytest
import torch

from fmgnn.measures import graph_measures, hop_counts, modularity


def random_graphs(n_graphs=6, n_nodes=30, p=0.15, seed=0, connected=True):
    graphs = []
    rng = np.random.default_rng(seed)
    while len(graphs) < n_graphs:
        g = nx.gnp_random_graph(n_nodes, p, seed=int(rng.integers(1 << 30)))
        if not connected or nx.is_connected(g):
            graphs.append(g)
    return graphs, np.stack([nx.to_numpy_array(g, dtype=bool) for g in graphs])


def test_node_measures_match_networkx():
    graphs, adjacency = random_graphs()
    weights = np.random.default_rng(1).uniform(-1, 1, size=adjacency.shape)
    weights = (weights + weights.transpose(0, 2, 1)) / 2
    m = graph_measures(adjacency, weights)
    for b, g in enumerate(graphs):
        assert m.degree[b].tolist() == [d for _, d in sorted(g.degree())]
        np.testing.assert_allclose(m.strength[b], (np.abs(weights[b]) * adjacency[b]).sum(1))
        np.testing.assert_allclose(m.clustering[b], [nx.clustering(g)[i] for i in range(30)], atol=1e-12)
        assert m.local_efficiency[b].mean() == pytest.approx(nx.local_efficiency(g), abs=1e-12)
        assert m.global_efficiency[b] == pytest.approx(nx.global_efficiency(g), abs=1e-12)
        assert m.characteristic_path_length[b] == pytest.approx(nx.average_shortest_path_length(g), abs=1e-12)
        assert m.disconnected_pair_fraction[b] == 0


def test_disconnected_graphs_report_the_missing_pairs():
    graphs, adjacency = random_graphs(n_graphs=4, p=0.04, seed=3, connected=False)
    m = graph_measures(adjacency)
    for b, g in enumerate(graphs):
        assert m.global_efficiency[b] == pytest.approx(nx.global_efficiency(g), abs=1e-12)
        lengths = dict(nx.all_pairs_shortest_path_length(g))
        finite = [d for i in lengths for j, d in lengths[i].items() if i != j]
        assert m.characteristic_path_length[b] == pytest.approx(np.mean(finite), abs=1e-12)
        assert m.disconnected_pair_fraction[b] == pytest.approx(1 - len(finite) / (30 * 29))


def test_modularity_is_exact_and_communities_are_good():
    from sklearn.metrics import adjusted_rand_score

    # Plant two dense blocks so there is real structure to find.
    planted = [nx.stochastic_block_model([20, 20], [[0.5, 0.03], [0.03, 0.5]], seed=s) for s in range(4)]
    adjacency = np.stack([nx.to_numpy_array(g, dtype=bool) for g in planted])
    m = graph_measures(adjacency)
    for b, g in enumerate(planted):
        parts = [set(np.flatnonzero(m.communities[b] == c)) for c in np.unique(m.communities[b])]
        assert m.modularity[b] == pytest.approx(nx.community.modularity(g, parts), abs=1e-12)
        louvain = nx.community.modularity(g, nx.community.louvain_communities(g, seed=0))
        assert m.modularity[b] >= 0.95 * louvain
        assert adjusted_rand_score([0] * 20 + [1] * 20, m.communities[b]) > 0.9


def test_hop_counts_and_single_community_q():
    path = torch.zeros(1, 4, 4, dtype=torch.bool)
    for i in range(3):
        path[0, i, i + 1] = path[0, i + 1, i] = True
    assert hop_counts(path)[0].tolist() == [6, 4, 2]  # ordered pairs at 1, 2, 3 hops
    assert float(modularity(path, torch.zeros(1, 4, dtype=torch.long))) == pytest.approx(0.0)
