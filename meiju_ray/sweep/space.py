"""The sweep's search-space grammar and trial configs: plain functions of dicts, no Ray.

tune.search_space:  {key: {choice|grid|uniform|loguniform|randint: [...]}}
                    or {key: {keys: [...], choice: [...]}}
trial_config(base, params)   the sampled values applied to the base config (type-checked)
expand_params(params, space) {"head_split": "[4, 2]"} -> {"model.heads_emo_to_int": 4, ...}
ended_naturally(...)         did a trial run to its own end, or did the scheduler stop it?
describe(params, space)      'threshold=0.5 head_split=4/2' (trial run names, progress lines)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from meiju_ray.config import ConfigError, ExperimentConfig, TrainConfig, set_dotted
from meiju_ray.sweep.grammar import distribution, is_encoded, samples, targets
from meiju_ray.train.engine import stops_after

# keys a trial cannot change: fixed by the teacher / pseudo-label pass, the cluster or the sweep
# itself
FIXED_PREFIXES = ("tune.", "ray.", "tracking.", "data.", "scaling.", "output_dir")
FIXED_KEYS = (
    "pseudo.calibrate",
    "pseudo.rounds",
    "pseudo.teachers",
    "pseudo.max_rows",
    "pseudo.actors",
    "pseudo.cpus_per_actor",
    "pseudo.gpus_per_actor",
    "pseudo.batch_size",
)


def decode(key: str, value: Any, space: dict[str, dict[str, list]]) -> Any:
    spec = space.get(key)
    return (
        json.loads(value)
        if spec is not None and is_encoded(spec) and isinstance(value, str)
        else value
    )


def expand_params(params: dict[str, Any], space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Sampled values per real config key (keys swept together are split up)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        value = decode(key, value, space)
        names = targets(key, space[key]) if key in space else [key]
        if len(names) == 1:
            out[names[0]] = value
        else:
            out.update(zip(names, value))
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_short(v) for v in value)
    return str(value)


def describe(params: dict[str, Any], space: dict[str, dict[str, list]]) -> str:
    """A trial's swept values in a few characters, e.g. 'threshold=0.5 head_split=4/2': the last
    part of each dotted key (a key swept with others keeps its own name)."""
    return " ".join(
        f"{key.rsplit('.', 1)[-1]}={_short(decode(key, params[key], space))}"
        for key in space
        if key in params
    )


def expected_trials(t) -> int:
    """How many trials a finished sweep has (`t`: the tune section): num_samples, times every grid's
    size when the search is random/grid (Tune repeats the grid num_samples times)."""
    n = t.num_samples
    if t.search_alg == "random":
        for spec in t.search_space.values():
            kind, values = distribution(spec)
            n *= len(values) if kind == "grid" else 1
    return n


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> ExperimentConfig:
    """The base config (a to_dict tree) with the sampled values set; type-checked and validated."""
    tree = json.loads(json.dumps(base))  # deep copy of plain data
    for key, value in expand_params(params, base["tune"]["search_space"]).items():
        set_dotted(tree, key, value)
    return ExperimentConfig.from_dict(tree)


def check_sweepable(key: str, spec: dict[str, list]) -> None:
    for name in targets(key, spec):
        if name.startswith(FIXED_PREFIXES) or name in FIXED_KEYS:
            raise ConfigError(
                f"config key 'tune.search_space.{key}': '{name}' cannot vary between trials "
                "(it is fixed by the data, the cluster, the teacher's pseudo-label pass or the "
                "sweep)"
            )


def ended_naturally(history: Sequence[dict], train: TrainConfig) -> bool:
    """From a trial's reported rows (each with epoch, is_best, maybe trial_done): did it finish on
    its own?"""
    if not history:
        return False
    last = history[-1]
    if "trial_done" in last and last["trial_done"] is not None and not is_nan(last["trial_done"]):
        return bool(last["trial_done"])
    best = max((int(r["epoch"]) for r in history if r.get("is_best")), default=-1)
    return stops_after(int(last.get("epoch", -1)), best, train)


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def check_space(cfg: ExperimentConfig) -> None:
    """Every value a trial can get (each choice, both ends of a range) is applied to the config and
    type-checked, so an unknown key or a wrong type fails before any trial, naming the key."""
    space = cfg.tune.search_space
    if not space:
        raise ConfigError("config key 'tune.search_space': empty; nothing to sweep")
    base = cfg.to_dict()
    for key, spec in space.items():
        check_sweepable(key, spec)
        for value in samples(spec):
            raw = json.dumps(value) if is_encoded(spec) else value
            try:
                trial_config(base, {key: raw})
            except ConfigError as exc:
                raise ConfigError(
                    f"config key 'tune.search_space.{key}': value {value!r}: {exc}"
                ) from None
