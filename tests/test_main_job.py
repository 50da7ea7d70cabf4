"""The main job end to end on a small sample cohort, its resume, and its report in a real browser."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from fmgnn.cohort import Cohort
from fmgnn.config import load_config, to_dict
from fmgnn.io import config_hash, read_manifest
from pipelines.bleg import BLEGJobConfig
from pipelines.main import MainJobConfig, run_main

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_every_stage_runs_and_a_rerun_resumes(main_run):
    out, summary = main_run
    assert summary["stages"] == ["ingest", "augment", "bleg", "tune", "pretrain", "fimp", "report"]
    assert json.loads((out / "summary.json").read_text())["total_s"] == summary["total_s"]
    assert summary["cohort"]["n_subjects"] == 24
    assert summary["augment"]["rows_written"] == 24 and summary["augment"]["error_rows"] == 0
    assert set(summary["bleg"]["models"]) == {"logistic", "gcn_alone", "bleg"}
    assert summary["tune"]["trials"] == 2 and (out / "tune" / "trials.json").is_file()
    assert set(summary["fimp"]["models"]) == {"fimp", "fimp_pretrained", "gcn", "node_mean", "interpolation"}
    assert yaml.safe_load((out / "fimp" / "config.yaml").read_text())["pretrained"] == str(out / "foundation")
    # The foundation model is pretrained on other subjects than the ones FIMP is tested on.
    main_cohort, pretrain_cohort = Cohort(out / "cohort.parquet"), Cohort(out / "foundation.run" / "synthetic.parquet")
    assert not np.allclose(main_cohort.timeseries(0)[:50], pretrain_cohort.timeseries(0)[:50])

    finished = sorted(p for p in out.rglob("seed*.json") if not {"ray_results", "logistic"} & set(p.parts))
    assert len(finished) == 2 * 2 + 5  # gcn_alone and bleg per fold (logistic is refitted: seconds), FIMP runs
    # Every stage's folder says what made it and what it read: the chain of the main job, through manifests.
    manifests = {name: read_manifest(out / name) for name in ("augment", "bleg", "tune", "foundation.run", "fimp", ".")}
    assert {name: m["job"] for name, m in manifests.items()} == {
        "augment": "augment", "bleg": "train bleg", "tune": "tune bleg", "foundation.run": "pretrain",
        "fimp": "train fimp", ".": "run"}
    assert manifests["bleg"]["inputs"]["texts.output"] == str(out / "augment")
    assert manifests["tune"]["inputs"]["base_run"] == str(out / "bleg")
    assert manifests["fimp"]["inputs"]["pretrained"] == str(out / "foundation")
    bleg_config = to_dict(load_config(BLEGJobConfig, out / "bleg" / "config.yaml"))
    assert manifests["bleg"]["config_hash"] == config_hash(bleg_config)
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    # A rerun with a free setting of every stage (how it runs, not what it computes) resumes; changed ones are
    # refused (test_job_recipe.py).
    free = ["augment.rows_per_part=4", "bleg.teacher_batch_size=2", "tune.max_concurrent_trials=1",
            "pretrain.ray.cpus_per_worker=0.5", "fimp.ray.max_concurrent_runs=1", "tracking.experiment=again"]
    again = run_main(load_config(MainJobConfig, out / "config.yaml", free))
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # nothing trained twice
    assert again["augment"]["subjects_to_do"] == 0 and again["augment"]["skipped_already_answered"] == 24
    assert again["bleg"]["models"]["bleg"]["summary"] == summary["bleg"]["models"]["bleg"]["summary"]
    assert again["tune"]["best_params"] == summary["tune"]["best_params"]
    assert again["fimp"]["models"] == summary["fimp"]["models"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    if os.environ.get("FMGNN_NO_BROWSER") == "1":
        pytest.skip("FMGNN_NO_BROWSER=1 and no Chromium")
    pytest.fail("no Chromium on PATH: `make test` installs Debian's chromium package (apt-get install chromium)")


def test_report_renders_in_headless_chromium_with_its_tables_and_figures(main_run, tmp_path):
    out, summary = main_run
    html = (out / "report.html").read_text()
    figures = json.loads((out / "figures.json").read_text())
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", html)  # self-contained: nothing fetched
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    for caption in ("classification", f"against {summary['bleg']['paired']['reference']}, split by split",
                    "trials", "reconstruction of the hidden windows", "augmentation runs"):
        assert f"<caption>{caption}" in dom
    bleg_rows = re.search(r"<caption>classification</caption>.*?<tbody>(.*?)</tbody>", dom, re.S).group(1)
    assert [re.sub("<.*?>", "", r.split("</td>")[0]) for r in bleg_rows.split("</tr>")[:-1]] == \
        list(summary["bleg"]["models"])
    assert dom.count("<img ") == len(figures) >= 6
    assert set(figures) >= {"bleg_roc", "bleg_learning_curves", "sweep_trials", "fimp_learning_curves",
                            "reconstruction", "pretrain_curve"}
    assert figures["bleg_roc"]["series"]["bleg"]["auc_mean"] == summary["bleg"]["models"]["bleg"]["summary"]["auc"][
        "mean"]

    screenshot = tmp_path / "report.png"
    subprocess.run([*browser, "--window-size=1200,3000", f"--screenshot={screenshot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)[..., :3]
    assert (pixels.min(axis=2) < 0.5).mean() > 0.01  # text, tables and figures drawn, not a blank page
