"""The pretraining corpus: scans' regions and recordings' vertices as sequences of windows, split by subject."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fimp.tasks.corpus import cut_sequences, load_corpus
from fmgnn.cohort import CohortError
from fmgnn.config import load_config
from fmgnn.errors import InputError
from pipelines.fimp import split_scans
from pipelines.pretrain import SHIPPED_RECORDING, SYNTHETIC, PretrainConfig, corpus_sources, run_pretrain, \
    shipped_recording_installed

REST01 = "pkg://brainfc/data/rest01"  # 100 parcels x 150 frames


def test_a_long_series_gives_every_whole_stretch_of_each_node_z_scored():
    frames, nodes = 47, 3
    series = np.arange(frames * nodes, dtype=np.float64).reshape(frames, nodes) ** 1.5
    series[15:30, 1] = 7.0  # node 1 is constant in stretch 1
    cut, constant = cut_sequences(series, window=5, n_windows=3)  # 15 frames a sequence: 3 stretches, 2 left
    assert cut.shape == (9, 3, 5) and constant.tolist() == [False] * 4 + [True] + [False] * 4
    assert not cut[4].any()
    for stretch in range(3):
        for node in range(nodes):
            expected = series[stretch * 15:(stretch + 1) * 15, node]
            expected = (expected - expected.mean()) / (expected.std(ddof=1) + 1e-6)  # zeros where constant
            np.testing.assert_allclose(cut[stretch * nodes + node].reshape(-1), expected, rtol=1e-5, atol=1e-5)


def test_cohorts_and_recordings_mix_and_subjects_stay_on_one_side(small_synthetic):
    corpus = load_corpus([str(small_synthetic), REST01], window=10, n_windows=5)
    cohort, recording = corpus.sources
    # 60 scans of 60 time points (one stretch of 50) and 100 parcels of 150 frames (3 stretches).
    assert (cohort.kind, cohort.subjects, recording.kind, recording.subjects) == ("cohort", 60, "parcels", 1)
    n_regions = cohort.sequences // 60
    assert recording.sequences == 300 and corpus.x.shape == (cohort.sequences + 300, 5, 10)
    assert len(set(corpus.subjects)) == 61 and (corpus.groups == corpus.subjects).all()
    torch.testing.assert_close(corpus.x.reshape(len(corpus.x), -1).std(1), torch.ones(len(corpus.x)), atol=1e-3,
                               rtol=0)
    train, val, _ = split_scans(corpus.groups, 0, 0.2, 0.0)
    assert not set(corpus.subjects[train]) & set(corpus.subjects[val])
    assert n_regions > 1 and len(val) % n_regions in (0, 300 % n_regions)  # whole subjects held out


def test_one_subject_is_split_by_node_and_a_short_series_is_named(small_synthetic):
    corpus = load_corpus([REST01], window=10, n_windows=5)
    assert len(set(corpus.groups)) == 100  # the parcels; a parcel's 3 stretches share a group
    train, val, _ = split_scans(corpus.groups, 0, 0.2, 0.0)
    assert not set(corpus.groups[train]) & set(corpus.groups[val]) and len(val) == 60
    with pytest.raises(CohortError, match=r"rest01: rest01 has 150 frames; a sequence needs 200"):
        load_corpus([REST01], window=20, n_windows=10)
    with pytest.raises(CohortError, match="nowhere.parquet: no such file or folder"):
        load_corpus(["nowhere.parquet"], window=10, n_windows=5)


def test_the_default_corpus_is_the_shipped_recording_when_installed():
    expected = [SHIPPED_RECORDING] if shipped_recording_installed() else [SYNTHETIC]
    assert corpus_sources(PretrainConfig()) == expected
    assert corpus_sources(PretrainConfig(corpus=["a.parquet"])) == ["a.parquet"]


def test_pretrain_on_a_cohort_and_a_recording_records_its_corpus_and_its_data_size(small_synthetic, tmp_path,
                                                                                      monkeypatch):
    common = [f"corpus=[{small_synthetic},{REST01}]", "fmri.window=10", "fmri.n_windows=5", "optim.epochs=1",
              "optim.batch_size=128", "foundation={hidden: 16, heads: 2, layers: 1, intermediate: 32}",
              "ray.num_workers=0"]
    summary = run_pretrain(load_config(PretrainConfig, None, [*common, f"output={tmp_path / 'all'}"]))
    assert [s["kind"] for s in summary["corpus"]] == ["cohort", "parcels"]
    record = json.loads((tmp_path / "all" / "fmgnn_pretrain.json").read_text())
    assert record["position"] == "sinusoidal" and record["train_subjects"] + 6 == 61  # 10% of subjects held out
    small = run_pretrain(load_config(PretrainConfig, None, [*common, f"output={tmp_path / 'few'}",
                                                             "train_subjects=5"]))
    few = json.loads((tmp_path / "few" / "fmgnn_pretrain.json").read_text())
    assert few["train_subjects"] == 5 and few["val_sequences"] == record["val_sequences"]
    with pytest.raises(InputError, match="train_subjects=99: the training part has 55 subjects"):
        run_pretrain(load_config(PretrainConfig, None, [*common, f"output={tmp_path / 'many'}", "train_subjects=99"]))
    assert not (tmp_path / "many.run").exists()  # refused before anything was written
    with pytest.raises(InputError, match=r"ray.num_workers=99: the corpus's training part has 5 units"):
        run_pretrain(load_config(PretrainConfig, None, [*common, f"output={tmp_path / 'wide'}", "train_subjects=5",
                                                        "ray.num_workers=99"]))
    assert not (tmp_path / "wide.run").exists()
    assert small["epochs"] == 1 and small["train_subjects"] == 5 and summary["train_subjects"] == 55

    def unread(*args, **kwargs):
        raise AssertionError("a finished pretraining read its corpus again")

    monkeypatch.setattr("pipelines.pretrain.index_corpus", unread)
    again = run_pretrain(load_config(PretrainConfig, None, [*common, f"output={tmp_path / 'few'}",
                                                             "train_subjects=5"]))
    assert again["val_mse"] == small["val_mse"]


def corpus_rank(rank: int, size: int, cohort_path: str, init_file: str, out) -> None:
    """One rank of a pretraining worker group: the sequences it reads, and the held-out part's metrics."""
    from fimp.foundation import FoundationConfig
    from fimp.reconstruction import ReconstructionConfig
    from fimp.tasks.corpus import index_corpus
    from fimp.train_corpus_reconstruction import CorpusReconstructionSpec, CorpusReconstructionTask
    from fmgnn.engine import World
    from pipelines.pretrain import split_units

    if init_file:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    index = index_corpus([cohort_path, REST01], window=10, n_windows=5)
    train, val = split_units(index, 0, 0.2)
    model = ReconstructionConfig(kind="foundation", n_tokens=5, token_values=10, position="sinusoidal",
                                 foundation=FoundationConfig(hidden=16, heads=2, layers=1, intermediate=32))
    task = CorpusReconstructionTask("corpus", CorpusReconstructionSpec(index, train, val, 0.2, True, model))
    task.setup(World(rank=rank, size=size))
    torch.manual_seed(0)
    scores = task.evaluate(task.build_model(), "val")[0]
    torch.save({"x": task.x, "val_x": task.val_x, "val_masks": task.val_masks, "scores": scores},
               out / f"rank{rank}-of-{size}.pt")
    if init_file:
        torch.distributed.destroy_process_group()


def test_each_pretraining_worker_reads_its_own_units_and_the_held_out_sums_add_up(small_synthetic, tmp_path):
    """The job's process ships the corpus's index, not its sequences: two ranks read disjoint shares of the
    training sequences (balanced: the recording's 240 beside the scans'), each held-out sequence hides the
    same windows on whichever rank reads it, and the summed metrics are one rank's."""
    from fimp.tasks.corpus import index_corpus
    from fimp.train_corpus_reconstruction import rank_units
    from pipelines.pretrain import split_units

    corpus_rank(0, 1, str(small_synthetic), "", tmp_path)
    torch.multiprocessing.spawn(corpus_rank, args=(2, str(small_synthetic), str(tmp_path / "init"), tmp_path),
                                nprocs=2, join=True)
    alone, *ranks = (torch.load(tmp_path / name) for name in ("rank0-of-1.pt", "rank0-of-2.pt", "rank1-of-2.pt"))
    index = index_corpus([str(small_synthetic), REST01], window=10, n_windows=5)
    train, val = split_units(index, 0, 0.2)
    shares = rank_units(index, train, 2)
    assert sorted(sum(shares, [])) == sorted(train) and not set(shares[0]) & set(shares[1])
    counts = [index.sequences(share) for share in shares]
    assert max(counts) - min(counts) <= max(index.units[u].sequences for u in train)  # balanced by sequences
    assert len(ranks[0]["x"]) == len(ranks[1]["x"]) == max(counts)  # padded to step together
    key = lambda x: x.reshape(len(x), -1)[:, :3].tolist()  # noqa: E731 (a sequence's first values)
    read = sorted(key(ranks[0]["x"][:counts[0]]) + key(ranks[1]["x"][:counts[1]]))
    assert read == sorted(key(alone["x"]))  # every training sequence once, over the two ranks
    both = {tuple(k): m for x, masks in ((r["val_x"], r["val_masks"]) for r in ranks)
            for k, m in zip(key(x), masks.tolist())}
    assert len(both) == len(alone["val_x"]) and all(both[tuple(k)] == m
                                                    for k, m in zip(key(alone["val_x"]), alone["val_masks"].tolist()))
    for rank in ranks:
        assert rank["scores"] == pytest.approx(alone["scores"], rel=1e-9)
