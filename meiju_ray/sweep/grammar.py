"""The search-space grammar of `tune.search_space`, parsed in one place: checked at load time,
then read by the trial configs (sweep.space), the Tune domains (distributed.tune) and the report.

    {key: {choice|grid|uniform|loguniform|randint: [...]}}  or  {key: {keys: [...], choice: [...]}}

Imports nothing of the project but its error type, so that config can run the check.
"""

from __future__ import annotations

import math
import re
from typing import Any

from meiju_ray.errors import ConfigError

SEARCH_DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
_SWEEP_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # also what MLflow accepts in a param name


def as_number(value: Any) -> float | int | None:
    """A finite int/float, also from a numeric string (YAML 1.1 reads 1e-4 as one); else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def check_grammar(
    name: str, metric: str, space: dict[str, dict[str, list]], search_alg: str
) -> None:
    """The sweep's names and search-space grammar (config.SweepConfig runs it at load time);
    sweep.space.check_space then checks that the swept keys exist and take the values."""
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"config key 'tune.name': {name!r} must be a plain directory name")
    if not metric:
        raise ConfigError("config key 'tune.metric': must name a reported metric, e.g. val_joint")
    for key, spec in space.items():
        where = f"tune.search_space.{key}"
        if not _SWEEP_NAME.fullmatch(key):
            raise ConfigError(
                f"config key '{where}': use a dotted config key or a plain name "
                "(letters, digits, _ . -)"
            )
        names = spec.get("keys", [key])
        if not names or not all(isinstance(k, str) and _SWEEP_NAME.fullmatch(k) for k in names):
            raise ConfigError(
                f"config key '{where}.keys': expected a list of dotted config keys, got {names!r}"
            )
        dists = {k: v for k, v in spec.items() if k != "keys"}
        if len(dists) != 1:
            raise ConfigError(
                f"config key '{where}': expected exactly one distribution "
                f"({' | '.join(SEARCH_DISTRIBUTIONS)}), "
                f"got {sorted(dists) or 'none'}"
            )
        ((kind, values),) = dists.items()
        if kind not in SEARCH_DISTRIBUTIONS:
            raise ConfigError(
                f"config key '{where}': unknown distribution {kind!r} "
                f"(one of {list(SEARCH_DISTRIBUTIONS)})"
            )
        if not values:
            raise ConfigError(f"config key '{where}.{kind}': the list is empty")
        if kind in ("choice", "grid"):
            if len(names) > 1 and not all(
                isinstance(v, list) and len(v) == len(names) for v in values
            ):
                raise ConfigError(
                    f"config key '{where}.{kind}': every value must be a list of "
                    f"{len(names)} items, one per key of {names}"
                )
            if kind == "grid" and search_alg == "optuna":
                raise ConfigError(
                    f"config key '{where}': grid is not supported with "
                    "tune.search_alg=optuna (use choice)"
                )
            continue
        if len(names) > 1:
            raise ConfigError(
                f"config key '{where}': keys swept together need choice or grid, not {kind}"
            )
        if len(values) != 2 or any(as_number(v) is None for v in values):
            raise ConfigError(
                f"config key '{where}.{kind}': expected [lo, hi] (two numbers), got {values!r}"
            )
        lo, hi = (as_number(v) for v in values)
        if not lo < hi:
            raise ConfigError(f"config key '{where}.{kind}': needs lo < hi, got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(f"config key '{where}.loguniform': needs lo > 0, got [{lo}, {hi}]")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(
                f"config key '{where}.randint': needs integers [lo, hi), got {values!r}"
            )


def targets(key: str, spec: dict[str, list]) -> list[str]:
    """The config keys one search-space entry sets: [key], or its `keys` list."""
    return list(spec.get("keys", [key]))


def distribution(spec: dict[str, list]) -> tuple[str, list]:
    """(kind, values) of a search-space entry, e.g. ("choice", [0.5, 0.9])."""
    ((kind, values),) = ((k, v) for k, v in spec.items() if k != "keys")
    return kind, values


def bounds(spec: dict[str, list]) -> tuple[float | int, float | int]:
    """(lo, hi) of a uniform / loguniform / randint entry as numbers (randint: hi exclusive)."""
    lo, hi = (as_number(v) for v in distribution(spec)[1])
    assert lo is not None and hi is not None, "check_grammar lets only numbers through"
    return lo, hi


def is_encoded(spec: dict[str, list]) -> bool:
    """choice/grid values that are lists or dicts travel through Tune as JSON strings (Optuna and
    MLflow only take scalars)."""
    kind, values = distribution(spec)
    return kind in ("choice", "grid") and any(isinstance(v, (list, dict)) for v in values)


def samples(spec: dict[str, list]) -> list[Any]:
    """Values that stand for a distribution when checking it: every choice, or both ends."""
    kind, values = distribution(spec)
    if kind in ("choice", "grid"):
        return list(values)
    lo, hi = bounds(spec)
    return [int(lo), int(hi) - 1] if kind == "randint" else [lo, hi]
