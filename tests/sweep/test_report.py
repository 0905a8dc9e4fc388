"""The sweep report's judgement of its winner, trial names and trial counts (plain functions)."""

from __future__ import annotations

import pytest

from meiju_ray.config import SweepConfig
from meiju_ray.sweep.report import SEED_NOISE, verdict
from meiju_ray.sweep.space import describe, expected_trials

SPACE = {
    "pseudo.threshold": {"grid": [0.5, 0.95]},
    "head_split": {"keys": ["model.heads_emo_to_int", "model.heads_int_to_emo"], "grid": [[4, 2]]},
}


def row(trial: str, joint: float, thr: float, n_pseudo: int, error: str = "") -> dict:
    return {
        "trial_id": trial,
        "best_val_joint": joint,
        "n_pseudo": n_pseudo,
        "error": error,
        "params": {"pseudo.threshold": thr, "head_split": [4, 2]},
    }


def test_clear_winner_has_its_margin_and_no_warning():
    rows = [row("a", 0.60, 0.5, 40), row("b", 0.63, 0.95, 5), row("c", 0.55, 0.5, 40)]
    got = verdict(rows, rows[1], "best_val_joint", "max", SPACE)
    assert got["runner_up"] == "a"
    assert got["margin"] == pytest.approx(0.03)
    assert got["warnings"] == []


def test_bit_identical_tie_with_no_pseudo_labels_is_flagged_twice():
    """The sweep_smoke failure: every trial got 0 pseudo-labels, two thresholds tie exactly."""
    rows = [row("a", 0.41, 0.5, 0), row("b", 0.41, 0.95, 0)]
    got = verdict(rows, rows[0], "best_val_joint", "max", SPACE)
    assert got["margin"] == 0.0
    assert any(w.startswith("tie:") for w in got["warnings"])
    assert any("no trial got a pseudo-label" in w for w in got["warnings"])


def test_near_tie_inside_the_seed_noise_is_flagged_and_failed_trials_ignored():
    rows = [
        row("a", 0.600, 0.5, 40),
        row("b", 0.600 + SEED_NOISE / 2, 0.95, 5),
        row("c", 0.99, 0.5, 40, error="boom"),
    ]
    got = verdict(rows, rows[1], "best_val_joint", "max", SPACE)
    assert got["runner_up"] == "a"
    assert [w.split(":")[0] for w in got["warnings"]] == ["near-tie"]


def test_minimised_metric_and_a_threshold_that_changed_no_count():
    rows = [
        {**r, "loss": r["best_val_joint"]}
        for r in (row("a", 0.3, 0.5, 12), row("b", 0.2, 0.95, 12))
    ]
    got = verdict(rows, rows[1], "loss", "min", SPACE)
    assert got["margin"] == pytest.approx(0.10)
    assert got["warnings"] == [
        "every value of pseudo.threshold gave the same 12 pseudo-labels: sweeping it changed "
        "nothing"
    ]


def test_describe_names_each_swept_value_shortly():
    params = {"pseudo.threshold": 0.95, "head_split": "[4, 2]", "train.lr": 0.00123456}
    space = {**SPACE, "train.lr": {"loguniform": [1e-4, 1e-2]}}
    assert describe(params, space) == "threshold=0.95 head_split=4/2 lr=0.001235"


@pytest.mark.parametrize(
    "search_alg, num_samples, expected", [("random", 1, 2), ("random", 3, 6), ("optuna", 5, 5)]
)
def test_expected_trials_counts_grid_repeats(search_alg, num_samples, expected):
    kind = "grid" if search_alg == "random" else "choice"  # optuna takes no grids
    t = SweepConfig(
        search_alg=search_alg,
        num_samples=num_samples,
        search_space={"pseudo.threshold": {kind: [0.5, 0.95]}, "train.lr": {"uniform": [0, 1]}},
    )
    assert expected_trials(t) == expected
