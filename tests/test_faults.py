"""Bad input as a user meets it: the command ends with one line naming the file and the problem, exit
status 2, and every output already written stays byte for byte as it was.

Killed work is tested where it happens: ``test_augment`` (kill -9 mid-augmentation, rerun: no row lost
or duplicated), ``test_bleg_pipeline`` (kill -9 mid-sweep, restore), ``test_multinode`` (a worker node
SIGKILLed with the training workers on it: the job finishes from its checkpoint on a replacement node).
Here: one of two DDP training worker processes SIGKILLed on the embedded default: the run resumes from its
checkpoint to the uninterrupted run's results, float for float (the multinode test checks that a job
survives its node and resumes; the equality is checked here, where it costs one job less).
"""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bleg.augment.prompt import DEFAULT_PROMPT, PROMPTS
from bleg.augment.store import OUTPUT_SCHEMA, PartWriter
from tests.conftest import fmgnn_in_process as fmgnn

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bad_cohorts(good: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Truncated, unexpected schema (label stored as text), and empty: each with its expected message."""
    metadata = {b"fmgnn.cohort": pq.ParquetFile(good).metadata.metadata[b"fmgnn.cohort"]}
    table = pq.read_table(good).replace_schema_metadata(metadata)
    truncated = folder / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wrong_type = folder / "label_as_text.parquet"
    column = table.schema.get_field_index("label")
    relabelled = table.set_column(column, "label", pc.cast(table["label"], pa.string()))
    pq.write_table(relabelled.replace_schema_metadata(metadata), wrong_type)
    empty = folder / "empty.parquet"
    pq.write_table(table.slice(0, 0), empty)
    return {"truncated": (truncated, "not a readable Parquet file, or truncated"),
            "schema": (wrong_type, "column label is string, expected int64"),
            "empty": (empty, "the cohort is empty (no subjects)")}


@pytest.fixture()
def earlier_run(tmp_path) -> Path:
    """An out_dir holding what an earlier main job left: records, a report, augmentation parts."""
    out = tmp_path / "main"
    (out / "augment" / "parts").mkdir(parents=True)
    (out / "config.yaml").write_text("out_dir: earlier\n")
    (out / "versions.json").write_text('{"fmgnn": "earlier"}')
    (out / "summary.json").write_text('{"total_s": 1.0}')
    (out / "report.html").write_text("<html>earlier report</html>")
    write_parts(out / "augment" / "parts", ["sub-000", "sub-001"], run_id="earlier")
    return out


def write_parts(folder: Path, subjects: list[str], run_id: str) -> Path:
    rows = {name: [None] * len(subjects) for name in OUTPUT_SCHEMA.names if name != "run_id"}
    rows.update(scan_id=subjects, prompt_version=[PROMPTS[DEFAULT_PROMPT].version] * len(subjects), model=["rules"] * len(subjects),
                engine=["rules"] * len(subjects), key_features=[["a feature"]] * len(subjects),
                conclusion=["a conclusion"] * len(subjects), attempts=[1] * len(subjects))
    return PartWriter(folder, run_id).write(pa.table(rows))


@pytest.mark.parametrize("fault", ["truncated", "schema", "empty"])
def test_bad_cohort_stops_the_main_job_and_damages_nothing(fault, small_synthetic, earlier_run, tmp_path):
    path, message = bad_cohorts(small_synthetic, tmp_path)[fault]
    before = snapshot(earlier_run)
    result = fmgnn("run", f"out_dir={earlier_run}", f"cohort={path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"fmgnn run: error: {path}: {message}")
    assert snapshot(earlier_run) == before


def test_bad_cohort_stops_augment_and_bleg_before_their_outputs_change(small_synthetic, earlier_run, tmp_path):
    path, message = bad_cohorts(small_synthetic, tmp_path)["schema"]
    before = snapshot(earlier_run)
    result = fmgnn("augment", f"cohort={path}", f"output={earlier_run / 'augment'}")
    assert result.returncode == 2 and f"{path}: {message}" in result.stderr
    result = fmgnn("train", "bleg", f"cohort={path}", f"run_dir={earlier_run}",
                   f"texts.output={earlier_run / 'augment'}")
    assert result.returncode == 2 and f"{path}: {message}" in result.stderr
    assert snapshot(earlier_run) == before


def test_truncated_augmentation_part_is_named_and_the_others_kept(small_synthetic, earlier_run, tmp_path):
    parts = earlier_run / "augment" / "parts"
    broken = write_parts(parts, ["sub-002"], run_id="broken")
    broken.write_bytes(broken.read_bytes()[:-40])
    before = snapshot(earlier_run)
    result = fmgnn("augment", f"cohort={small_synthetic}", f"output={earlier_run / 'augment'}")
    assert result.returncode == 2
    assert f"fmgnn augment: error: {broken}: unreadable part file" in result.stderr
    result = fmgnn("train", "bleg", f"cohort={small_synthetic}", f"run_dir={tmp_path / 'bleg'}",
                   f"texts.output={earlier_run / 'augment'}")
    assert result.returncode == 2
    assert f"fmgnn train: error: {broken}: unreadable part file" in result.stderr
    assert snapshot(earlier_run) == before


def registered_epoch(run: Path) -> int:
    """The latest epoch Ray Train has registered a checkpoint of."""
    try:
        results = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
        return max([c["metrics"]["epoch"] for c in results], default=-1)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not yet written, or being rewritten
        return -1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.system
def test_killed_training_worker_resumes_from_its_checkpoint(small_synthetic, ray_session, tmp_path):
    import ray
    from ray.util.state import list_actors

    from bleg.graph_encoder import GraphEncoderConfig
    from bleg.student import StudentConfig
    from bleg.train_student import AlignmentConfig, StudentTask
    from fmgnn.cohort import Cohort
    from fmgnn.evaluation.splits import FoldConfig, make_splits
    from fmgnn.graphs import GraphConfig
    from pipelines.ray_session import RayConfig
    from pipelines.trainers import fit_remote, make_trainer

    cohort = Cohort(small_synthetic)
    split = make_splits(cohort.labels(), FoldConfig(n_folds=2, seeds=[0]))[0]
    task = StudentTask("student", str(small_synthetic), split, GraphConfig(),
                       AlignmentConfig(lam=0.0, epochs=20, patience=100, student=StudentConfig(bottleneck=8,
                                                                                               head_hidden=8)),
                       GraphEncoderConfig(in_channels=cohort.n_rois, hidden=[16], out_channels=8))

    def trainer(name: str):  # two DDP workers: the group restarts whole, both ranks from rank 0's checkpoint
        return make_trainer([task], name, RayConfig(num_workers=2, cpus_per_worker=0.5, max_failures=2),
                            str(tmp_path))

    reference = trainer("reference").fit().metrics
    running = fit_remote.remote(trainer("killed"))
    deadline = time.monotonic() + 180
    while registered_epoch(tmp_path / "killed") < 3:
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.1)
    from pipelines import ray_session as session

    # The session's own instance by address: another Ray on the machine (a parallel job) must not confuse it.
    workers = list_actors(address=session.EMBEDDED_DASHBOARD, detail=True,
                          filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert len(workers) == 2
    os.kill(workers[1].pid, signal.SIGKILL)
    metrics, _ = ray.get(running, timeout=300)

    assert registered_epoch(tmp_path / "killed") == 19  # the run went on to its last epoch
    assert metrics["resumed_at"] and 3 <= metrics["resumed_at"][0] < 19  # from a checkpoint, not from scratch
    assert [h["epoch"] for h in metrics["history"]] == list(range(20))
    np.testing.assert_allclose([h["train_loss"] for h in metrics["history"]],
                               [h["train_loss"] for h in reference["history"]], atol=1e-5)
    np.testing.assert_allclose(metrics["test_probabilities"], reference["test_probabilities"], atol=1e-5)


def test_tune_storage_writes_a_file_whole_or_not_at_all(tmp_path):
    """Tune copies its restore state to the storage path; a driver killed mid-copy must not leave half a
    file there (CI: a truncated search state, then a resumed sweep with no configuration)."""
    import pickle

    import pyarrow.fs as pafs

    from tune.storage import storage_filesystem

    fs = storage_filesystem(str(tmp_path))
    target = tmp_path / "experiment" / "basic-variant-state-x.json"
    fs.create_dir(str(target.parent), recursive=True)
    stream = fs.open_output_stream(str(target))
    stream.write(b"half of a")
    stream.flush()
    assert not target.exists()  # what a SIGKILL here leaves: no file of that name
    stream.write(b" state")
    stream.close()
    assert target.read_bytes() == b"half of a state"

    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "tuner.pkl").write_bytes(b"x" * 3_000_000)
    pafs.copy_files(str(staging), str(tmp_path / "experiment"), destination_filesystem=fs)  # Ray's sync-up
    assert (tmp_path / "experiment" / "tuner.pkl").read_bytes() == b"x" * 3_000_000
    assert sorted(p.name for p in (tmp_path / "experiment").iterdir()) == ["basic-variant-state-x.json", "tuner.pkl"]
    assert pickle.loads(pickle.dumps(fs)).get_file_info(str(target)).size == 15  # Ray ships it to trials
    assert storage_filesystem("s3://bucket/sweeps") is None  # an object store writes objects whole


def test_unreadable_sweep_state_is_named_before_tune_restores_it(tmp_path):
    import ray.cloudpickle

    from fmgnn.errors import InputError
    from tune.storage import check_restorable

    (tmp_path / "tuner.pkl").write_bytes(ray.cloudpickle.dumps({"a": 1}))
    (tmp_path / "experiment_state-2026-12-02_21-59-24.json").write_text('{"trial_data": []}')
    (tmp_path / "basic-variant-state-2026-12-02_21-59-24.json").write_bytes(ray.cloudpickle.dumps({"b": 2}))
    check_restorable(str(tmp_path))
    (tmp_path / "basic-variant-state-2026-12-02_21-59-24.json").write_bytes(b"")  # cut by a kill
    with pytest.raises(InputError, match="basic-variant-state-2026-12-02_21-59-24.json.*cannot be read"):
        check_restorable(str(tmp_path))
