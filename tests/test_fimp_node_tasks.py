"""The single-graph FIMP tasks: spatial genes (bdtnp, tangram) and masked images (digits)."""

from __future__ import annotations

import functools
import gzip

import numpy as np
import pytest
import torch

from fimp.foundation import FoundationConfig
from fimp.reconstruction import ReconstructionConfig, build_model
from fimp.tasks.fmri import window_mask
from fimp.tasks.images import (ImageTaskConfig, load_images, read_idx_images, read_images, to_patches,
                               visible_distances, visible_neighbours)
from fimp.tasks.nodes import held_out_masks, neighbourhood, scale_tokens, split_nodes
from fimp.tasks.spatial import SpatialTaskConfig, load_spatial
from fimp.train_node_reconstruction import message_hops, run_on
from fmgnn.cohort import CohortError
from fmgnn.plots import tokens_to_image
from tests.conftest import SHARED_DATA

BDTNP = SHARED_DATA / "bdtnp"
TANGRAM = SHARED_DATA / "tangram" / "smFISH_anndata.h5ad"


def needs(path):
    """Real data the test reads; a missing file fails the test (a broken checkout), it is not skipped."""
    def wrap(test):
        def run(*args, **kwargs):
            if not path.exists():
                pytest.fail(f"real data not found at {path} (see ../shared/data/README.md)")
            return test(*args, **kwargs)
        return functools.wraps(test)(run)
    return wrap


@needs(BDTNP)
def test_bdtnp_cells_genes_and_a_spatial_knn_graph():
    task = load_spatial(SpatialTaskConfig(path=str(BDTNP), k=6))
    assert task.x.shape == (3039, 84, 1) and task.token_names[:2] == ["aay", "Ama"]
    source, target = task.edge_index
    assert task.edge_index.shape[1] == 3039 * 6 and not (source == target).any()
    # Each cell's neighbours are its 6 nearest cells in space.
    coords = np.loadtxt(BDTNP / "geometry.txt", skiprows=1)[:3039]
    distances = np.linalg.norm(coords - coords[0], axis=1)
    distances[0] = np.inf
    assert set(source[target == 0].tolist()) == set(np.argsort(distances)[:6].tolist())


@needs(TANGRAM)
def test_tangram_h5ad_is_read_without_anndata():
    task = load_spatial(SpatialTaskConfig(path=str(TANGRAM), log1p=True))
    assert task.x.shape == (4840, 22, 1) and len(task.token_names) == 22 and task.x.min() >= 0


def test_bad_gene_files_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "dge.txt").write_text("g1\tg2\n0.1\t0.2\n0.3\n")
    (tmp_path / "geometry.txt").write_text("x y z\n0 0 0\n1 1 1\n")
    with pytest.raises(CohortError, match="dge.txt|row"):
        load_spatial(SpatialTaskConfig(path=str(tmp_path)))
    (tmp_path / "dge.txt").write_text("g1\tg2\n0.1\t0.2\n0.3\tnan\n")
    with pytest.raises(CohortError, match="cell 1"):
        load_spatial(SpatialTaskConfig(path=str(tmp_path)))
    with pytest.raises(CohortError, match="bdtnp folder or an .h5ad"):
        load_spatial(SpatialTaskConfig(path=str(tmp_path / "missing.csv")))


def test_scaling_uses_training_nodes_only():
    x = torch.randn(50, 3, 2)
    train = list(range(30))
    scaled = scale_tokens(x, train)
    assert torch.allclose(scaled[train].mean(0), torch.zeros(3, 2), atol=1e-5)
    x[30:] += 100.0  # changing test nodes changes nothing fitted
    assert torch.allclose(scale_tokens(x, train)[train], scaled[train])


def test_patches_round_trip_and_the_graph_ignores_hidden_pixels():
    images = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    patches = to_patches(images, 2)
    assert patches.shape == (5, 16, 4)
    np.testing.assert_array_equal(tokens_to_image(patches[3].numpy(), 4, 2), images[3])
    masks = torch.zeros(5, 16, dtype=torch.bool)
    masks[:, 0] = True
    changed = patches.clone()
    changed[:, 0] = torch.rand(5, 4)  # only hidden patches change
    assert torch.allclose(visible_distances(patches, masks), visible_distances(changed, masks))


def test_image_neighbours_a_block_at_a_time_are_the_dense_matrix_s():
    from fimp.tasks.fmri import knn_edges

    x = to_patches(read_images(ImageTaskConfig(limit=300)), 2)
    masks = torch.rand(300, 16, generator=torch.Generator().manual_seed(0)) < 0.25
    dense = knn_edges(-visible_distances(x, masks), 8)
    for block_pairs in (300 * 7, 300 * 64, 300 * 300):  # blocks of 7 and 64 images (uneven last), and one block
        assert torch.equal(visible_neighbours(x, masks, 8, block_pairs), dense)


def test_digits_task_fixed_masks_per_seed():
    first, again, other = (load_images(ImageTaskConfig(limit=200), s) for s in (0, 0, 1))
    assert first.x.shape == (200, 16, 4) and first.masks.sum(1).eq(4).all()
    assert torch.equal(first.masks, again.masks) and not torch.equal(first.masks, other.masks)
    assert torch.equal(held_out_masks(first, 0.5, 123), first.masks)  # the task's own masks win


def test_idx_reader_checks_the_header(tmp_path):
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    header = b"".join(v.to_bytes(4, "big") for v in (0x803, 2, 4, 4))
    (tmp_path / "ok.gz").write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(read_idx_images(tmp_path / "ok.gz"), images)
    (tmp_path / "short").write_bytes(header + images.tobytes()[:-3])
    with pytest.raises(CohortError, match="header says 2 images"):
        read_idx_images(tmp_path / "short")


@pytest.mark.parametrize("kind", ["fimp", "gcn", "sage", "gat", "gin", "mlp"])
def test_neighbourhood_batches_equal_the_whole_graph(kind):
    """A batch run on its targets' in-neighbourhood gives exactly the full-graph outputs."""
    torch.manual_seed(0)
    n, f, w = 40, 5, 3
    x = torch.randn(n, f, w)
    edge_index = torch.randint(0, n, (2, 160))
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    masks = window_mask(n, f, 0.4, torch.Generator().manual_seed(0))
    config = ReconstructionConfig(kind=kind, n_tokens=f, token_values=w, gnn_hidden=16, fimp_layers=2,
                                  foundation=FoundationConfig(hidden=8, heads=2, layers=1, intermediate=16))
    model = build_model(config).eval()
    full = model(x, masks, edge_index)
    targets = torch.tensor([3, 17, 29])
    batch = run_on(model, x, masks, edge_index, targets, message_hops(config))
    torch.testing.assert_close(batch, full[targets], atol=1e-5, rtol=1e-5)
    # The MLP reads no neighbours: its batches hold the targets alone.
    assert torch.equal(neighbourhood(edge_index, targets, 0, n).nodes, targets)


def test_splits_are_disjoint_and_cover_every_node():
    train, val, test = split_nodes(100, 2, 0.15, 0.15)
    assert sorted(train + val + test) == list(range(100)) and len(test) == 15 and len(val) == 15
