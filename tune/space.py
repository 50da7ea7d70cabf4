"""Search spaces written in YAML, turned into Ray Tune domains.

Each key is a dotted config path of the job being tuned, each value one sampler::

    stage3.lam: {choice: [0.2, 0.3, 0.4, 0.5, 0.6]}
    stage3.lr: {loguniform: [1.0e-4, 1.0e-3]}
    stage3.student.bottleneck: {choice: [64, 128, 256]}
    stage3.temperature: {uniform: [1.0, 5.0]}
    stage3.align: {grid: [mse, cosine, kl]}  # every value (with search: random)
    stage3.epochs: 60                       # a plain value is fixed for every trial
"""

from __future__ import annotations

from typing import Any

from ray import tune

from fmgnn.errors import InputError

SAMPLERS = {
    "choice": lambda v: tune.choice(list(v)),
    "uniform": lambda v: tune.uniform(*v),
    "loguniform": lambda v: tune.loguniform(*v),
    "randint": lambda v: tune.randint(*v),
    "quniform": lambda v: tune.quniform(*v),
    "grid": lambda v: tune.grid_search(list(v)),  # every value, num_samples times each (random search only)
}


def search_space(values: dict[str, Any], where: str = "space") -> dict[str, Any]:
    """``{dotted key: Tune domain or fixed value}``; an unknown sampler names its key."""
    space = {}
    for key, spec in values.items():
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
                raise InputError(f"{where}.{key}: give one sampler out of {sorted(SAMPLERS)}, e.g. {{choice: [..]}}")
            kind, args = next(iter(spec.items()))
            try:
                space[key] = SAMPLERS[kind](args)
            except TypeError as err:
                raise InputError(f"{where}.{key}: bad arguments for {kind}: {args!r} ({err})") from None
        else:
            space[key] = spec
    return space

