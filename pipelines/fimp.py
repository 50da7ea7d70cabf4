"""``fmgnn train fimp``: FIMP against its baselines on a reconstruction task, seeds x models under Ray Train.

    fmgnn train fimp --config configs/fimp_fmri.yaml                    # the built-in synthetic cohort
    fmgnn train fimp --config configs/fimp_fmri.yaml cohort=cohorts/my_scans.parquet
    ray job submit --working-dir . -- python -m pipelines.train fimp --config configs/fimp_fmri.yaml

Per seed the scans are split into train, validation and test; every model of that seed sees the
same split and the same validation and test masks. The run directory holds ``config.yaml``,
``versions.json``, ``<model>/seed<s>.json``, ``metrics.json`` (mean and std over seeds, and FIMP's
relative improvement over the best baseline) and ``plots/`` (learning curves, true vs predicted
windows). A rerun skips finished (model, seed) pairs and resumes unfinished ones.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fimp.hf_export import load_token_weights
from fimp.reconstruction import ReconstructionConfig, build_model
from fimp.tasks.fmri import FMRITaskConfig
from fimp.train_reconstruction import ReconstructionSpec, ReconstructionTrainConfig, train_reconstruction
from fimp.weights import load_foundation_weights
from fmgnn.cohort import Cohort, CohortError
from fmgnn.config import save_config
from fmgnn.io import atomic_write_json, environment_record
from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic
from pipelines.ray_session import RayConfig, start_ray
from pipelines.trainers import Steps, fit_remote, make_trainer, resolve_storage_path, run_steps

log = logging.getLogger("fmgnn.fimp")

BASELINES = ("foundation", "mlp", "gcn", "sage", "gat", "gin", "gps")


@dataclass
class FIMPJobConfig:
    """Args:
        cohort: Cohort with time series; empty: a synthetic cohort written into run_dir (``synthetic``).
        synthetic: The built-in cohort's size when ``cohort`` is empty.
        run_dir: Output directory.
        models: ``fimp`` (FIMP-base), ``fimp_pretrained`` (needs ``pretrained``) and baselines.
        pretrained: A foundation model folder (Hugging Face ViT/ViTMAE format, e.g. from ``fmgnn pretrain``).
        seeds: One split of the scans per seed.
        val_fraction: Share of scans for validation.
        test_fraction: Share of scans for testing.
        fmri: Windows, graph and masking.
        model: Model shapes (the kind is set per entry of ``models``).
        optim: Optimisation.
        storage_path: Ray Train checkpoints (local or s3://, gs://); None: ``<run_dir>/ray_results``.
    """

    cohort: str = ""
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_subjects=60, n_timepoints=200))
    run_dir: str = "runs/fimp_fmri"
    models: list[str] = field(default_factory=lambda: ["fimp", *BASELINES])
    pretrained: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    fmri: FMRITaskConfig = field(default_factory=FMRITaskConfig)
    model: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    optim: ReconstructionTrainConfig = field(default_factory=ReconstructionTrainConfig)
    storage_path: str | None = None
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - {"fimp", "fimp_pretrained", *BASELINES})
        if unknown:
            raise ValueError(f"models: unknown {unknown}")
        if "fimp_pretrained" in self.models and not self.pretrained:
            raise ValueError("models: fimp_pretrained needs pretrained=<foundation model folder>")


def split_scans(n: int, seed: int, val_fraction: float, test_fraction: float) -> tuple[list[int], ...]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test, n_val = max(1, round(test_fraction * n)), max(1, round(val_fraction * n))
    return sorted(order[n_test + n_val:]), sorted(order[n_test:n_test + n_val]), sorted(order[:n_test])


def pretrained_state(config: FIMPJobConfig, model_config: ReconstructionConfig) -> dict:
    """A FIMP model's initial weights with every FIMP layer's foundation layers from ``pretrained``."""
    from transformers import AutoModel

    foundation = AutoModel.from_pretrained(config.pretrained)
    model = build_model(model_config)
    for conv in model.convs:
        load_foundation_weights(conv, foundation.state_dict(), "vit")
    tokens = load_token_weights(config.pretrained)  # the pretraining model's embedding and decoder
    if tokens is not None:
        model.load_state_dict(tokens, strict=False)
    return model.state_dict()


def run_fimp(config: FIMPJobConfig) -> dict[str, Any]:
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    atomic_write_json(run_dir / "versions.json", environment_record())
    cohort_path = Path(config.cohort) if config.cohort else run_dir / "synthetic.parquet"
    if not config.cohort and not cohort_path.is_file():
        ingest_synthetic(cohort_path, config.synthetic)
    cohort = Cohort(cohort_path)
    if cohort.timeseries(0) is None:
        raise CohortError(f"{cohort_path}: FC only; fMRI reconstruction needs time series")
    start_ray(config.ray)
    storage_path = resolve_storage_path(config.storage_path, run_dir)
    started = time.monotonic()

    def steps(model_name: str, seed: int) -> Steps:
        out = run_dir / model_name / f"seed{seed}.json"
        if out.is_file():
            return
        train, val, test = split_scans(len(cohort), seed, config.val_fraction, config.test_fraction)
        kind = "fimp" if model_name.startswith("fimp") else model_name
        model_config = ReconstructionConfig(**{**config.model.__dict__, "kind": kind,
                                               "n_tokens": config.fmri.n_windows, "token_values": config.fmri.window})
        init = pretrained_state(config, model_config) if model_name == "fimp_pretrained" else None
        spec = ReconstructionSpec(str(cohort_path.resolve()), train, val, test, config.fmri, model_config,
                                  config.optim, init, seed)
        start = time.monotonic()
        metrics, checkpoint = yield fit_remote.remote(
            make_trainer(train_reconstruction, spec, f"{model_name}-seed{seed}", config.ray, storage_path))
        with checkpoint.as_directory() as directory:
            shutil.copy(Path(directory) / "example.npz", run_dir / model_name / f"seed{seed}-example.npz")
        result = {"model": model_name, "seed": seed, "mse": metrics["test_mse"], "r2": metrics["test_r2"],
                  "best_epoch": metrics["best_epoch"], "history": metrics["history"],
                  "seconds": round(time.monotonic() - start, 1), "n_train": len(train), "n_test": len(test)}
        atomic_write_json(out, result)
        log.info("%s seed %d: test MSE %.4f, R^2 %.3f", model_name, seed, result["mse"], result["r2"])

    for name in config.models:
        (run_dir / name).mkdir(exist_ok=True)
    run_steps([steps(m, s) for s in config.seeds for m in config.models], config.ray.max_concurrent_runs)
    summary = summarize_runs(run_dir, config)
    summary["wall_time_s"] = round(time.monotonic() - started, 1)
    atomic_write_json(run_dir / "metrics.json", summary)
    plot_reconstructions(run_dir, config)
    print(format_table(summary))
    return summary


def summarize_runs(run_dir: Path, config: FIMPJobConfig) -> dict[str, Any]:
    models = {}
    for name in config.models:
        runs = [json.loads((run_dir / name / f"seed{s}.json").read_text()) for s in config.seeds]
        models[name] = {k: {"mean": float(np.mean([r[k] for r in runs])),
                            "std": float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0}
                        for k in ("mse", "r2")}
        models[name]["seconds"] = sum(r["seconds"] for r in runs)
    summary: dict[str, Any] = {"task": "fmri", "seeds": config.seeds, "models": models}
    baselines = [m for m in config.models if m in BASELINES]
    for fimp in [m for m in config.models if m.startswith("fimp")]:
        if baselines:
            best = max(baselines, key=lambda m: models[m]["r2"]["mean"])
            ours, theirs = models[fimp], models[best]
            summary[f"{fimp}_vs_best_baseline"] = {
                "baseline": best,
                "r2_relative": (ours["r2"]["mean"] - theirs["r2"]["mean"]) / abs(theirs["r2"]["mean"]),
                "mse_relative": (theirs["mse"]["mean"] - ours["mse"]["mean"]) / theirs["mse"]["mean"],
            }
    return summary


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'model':<18}{'MSE':>20}{'R^2':>20}"]
    for name, m in summary["models"].items():
        lines.append(f"{name:<18}{m['mse']['mean']:>12.4f} ± {m['mse']['std']:<5.4f}"
                     f"{m['r2']['mean']:>12.3f} ± {m['r2']['std']:<5.3f}")
    for key, value in summary.items():
        if key.endswith("_vs_best_baseline"):
            lines.append(f"{key}: R^2 {100 * value['r2_relative']:+.1f}%, MSE {100 * value['mse_relative']:+.1f}% "
                         f"against {value['baseline']}")
    return "\n".join(lines)


def plot_reconstructions(run_dir: Path, config: FIMPJobConfig) -> None:
    """True vs predicted windows of one test region per model (seed of the first run), hidden ones shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    seed = config.seeds[0]
    fig, axes = plt.subplots(len(config.models), 1, figsize=(9, 1.6 * len(config.models)), squeeze=False)
    for ax, name in zip(axes[:, 0], config.models):
        example = np.load(run_dir / name / f"seed{seed}-example.npz")
        f, w = example["target"].shape
        t = np.arange(f * w)
        ax.plot(t, example["target"].reshape(-1), "k", lw=1, label="true")
        ax.plot(t, example["predicted"].reshape(-1), "C1", lw=1, label="predicted")
        for window in np.flatnonzero(example["mask"]):
            ax.axvspan(window * w, (window + 1) * w, color="0.85", zorder=0)
        ax.set_ylabel(name, rotation=0, ha="right")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("time point (hidden windows shaded)")
    fig.tight_layout()
    fig.savefig(plots / "reconstruction.png", dpi=110)
    plt.close(fig)
