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
    assert small["epochs"] == 1 and small["train_subjects"] == 5 and summary["train_subjects"] == 55

    def unread(*args, **kwargs):
        raise AssertionError("a finished pretraining read its corpus again")

    monkeypatch.setattr("pipelines.pretrain.load_corpus", unread)
    again = run_pretrain(load_config(PretrainConfig, None, [*common, f"output={tmp_path / 'few'}",
                                                             "train_subjects=5"]))
    assert again["val_mse"] == small["val_mse"]
