"""Paired R^2 differences between models of two ``fmgnn train fimp`` runs on the same seeds.

Two runs of the same task and seeds share their splits and masks (both depend on the seed alone), so a
model of one run pairs with a model of the other seed by seed: how the equal-parameter rows of
bench/RESULTS.md (baselines rerun at FIMP's parameter count) are compared with FIMP.

    python bench/fimp_pair_runs.py runs/fmri:fimp runs/fmri_eqp:gat runs/fmri_eqp:gcn ...

The first argument is the model; every other one is a reference it is compared with.
"""

from __future__ import annotations

import argparse

from fimp.run_record import FIMPRun
from fmgnn.evaluation.paired import paired_difference, relative_r2, split_ratio


def seed_results(spec: str) -> tuple[str, dict[str, dict]]:
    run_dir, model = spec.rsplit(":", 1)
    run = FIMPRun(run_dir)
    seeds = sorted(int(p.stem.removeprefix("seed")) for p in (run.path / model).glob("seed*.json"))
    if not seeds:
        raise SystemExit(f"{spec}: no seed results in {run.path / model}")
    return f"{model} ({run.path.name})", {f"seed{s}": run.seed_result(model, s) for s in seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="RUN_DIR:MODEL")
    parser.add_argument("references", nargs="+", help="RUN_DIR:MODEL each")
    args = parser.parse_args()
    name, ours = seed_results(args.model)
    for spec in args.references:
        reference, theirs = seed_results(spec)
        ratio = split_ratio([r["n_test"] for r in theirs.values()], [r["n_train"] for r in theirs.values()])
        difference = paired_difference(name, reference, "r2", {name: ours, reference: theirs}, ratio)
        mean = {k: sum(r["r2"] for r in v.values()) / len(v) for k, v in ((name, ours), (reference, theirs))}
        relative = relative_r2(mean[name], mean[reference])
        print(difference.line() + (f"; {relative:+.1%} of its R^2" if relative is not None else ""))


if __name__ == "__main__":
    main()
