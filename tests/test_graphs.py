import numpy as np
import pytest
import torch

from fmgnn.graphs import GraphConfig, build_graphs, edge_mask, pearson_fc


def test_pearson_fc_matches_numpy_and_handles_constant_rois():
    ts = np.random.default_rng(0).normal(size=(3, 40, 7))
    ts[2, :, 4] = 5.0  # a flat ROI
    fc = pearson_fc(ts)
    np.testing.assert_allclose(fc[0], np.corrcoef(ts[0].T), atol=1e-6)
    assert np.all(fc[2, 4, np.arange(7) != 4] == 0) and fc[2, 4, 4] == 1
    np.testing.assert_allclose(pearson_fc(ts[1]), fc[1])  # one subject == batch of one


@pytest.mark.parametrize("density", [0.05, 0.12, 0.5])
def test_density_keeps_the_strongest_pairs_exactly(density):
    fc = torch.as_tensor(pearson_fc(np.random.default_rng(1).normal(size=(4, 50, 20))))
    adjacency = edge_mask(fc, GraphConfig(density=density, self_loops=False))
    k = round(density * 190)
    rows, cols = torch.triu_indices(20, 20, 1)
    for b in range(4):
        kept = adjacency[b, rows, cols]
        assert int(kept.sum()) == k
        assert torch.equal(adjacency[b], adjacency[b].T)
        strength = fc[b, rows, cols].abs()
        assert strength[kept].min() >= strength[~kept].max()


def test_sign_options_and_self_loops():
    fc = torch.tensor([[[1.0, 0.9, -0.95], [0.9, 1.0, 0.1], [-0.95, 0.1, 1.0]]])
    one_pair = 1 / 3
    absolute = edge_mask(fc, GraphConfig(density=one_pair, self_loops=False))[0]
    positive = edge_mask(fc, GraphConfig(density=one_pair, sign="positive", self_loops=True))[0]
    assert absolute[0, 2] and not absolute[0, 1]
    assert positive[0, 1] and not positive[0, 2] and positive.diagonal().all()


def test_build_graphs_features_weights_labels():
    fc = pearson_fc(np.random.default_rng(2).normal(size=(2, 30, 6)))
    graphs = build_graphs(fc, np.array([0, 1]), GraphConfig(density=0.2, node_features="binary"))
    g = graphs[1]
    n_undirected = round(0.2 * 15)
    assert g.edge_index.shape == (2, 2 * n_undirected + 6) and int(g.y) == 1
    dense = torch.zeros(6, 6)
    dense[g.edge_index[0], g.edge_index[1]] = 1
    assert torch.equal(g.x, dense)  # binary features are the adjacency rows
    assert torch.all(g.edge_weight >= 0)
    signed = build_graphs(fc, None, GraphConfig(edge_weight="signed"))[0]
    assert torch.allclose(signed.edge_weight, torch.as_tensor(fc[0])[signed.edge_index[0], signed.edge_index[1]])
    identity = build_graphs(fc, None, GraphConfig(node_features="identity"))[0]
    assert torch.equal(identity.x, torch.eye(6))


def test_bad_density_and_shape():
    with pytest.raises(ValueError, match="graph.density must be in"):
        GraphConfig(density=0)
    with pytest.raises(ValueError, match=r"fc must have shape \(B, R, R\)"):
        build_graphs(np.zeros((2, 3, 4)), None, GraphConfig())
