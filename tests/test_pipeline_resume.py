"""`meiju-ray pipeline --resume`: finished stages with the same fingerprint are reused, a changed
setting re-runs the stages it reaches and no others, and a stage that did not finish is re-run."""

from __future__ import annotations

import json

import pytest

from meiju_ray.pipeline import STAGE_FILE, reuse_or_run, run_pipeline
from tests.conftest import small_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _mtimes(out, *stages):
    return {s: (out / s / STAGE_FILE).stat().st_mtime_ns for s in stages}


def test_resume_reuses_finished_stages_and_reruns_what_changed(small_world, tmp_path, caplog):
    out = tmp_path / "run"
    base = [
        "train.epochs=3",
        f"data.cache_dir={tmp_path / 'packed'}",
        "pseudo.teachers=1",
        "tracking.enabled=false",  # the stages' reuse is the point here; MLflow is tested elsewhere
        "pseudo.threshold=0.5",
    ]
    first = run_pipeline(small_config(small_world, out, *base))
    stages = ("teacher", "pseudo_r1", "student_r1")
    before = _mtimes(out, *stages)

    # the same config: every stage reused, the same result
    with caplog.at_level("INFO", logger="meiju_ray"):
        again = run_pipeline(small_config(small_world, out, *base), resume=True)
    assert _mtimes(out, *stages) == before
    assert again["student"] == first["student"] and again["n_pseudo"] == first["n_pseudo"]
    assert (
        sum("[resume]" in r.getMessage() and "reused" in r.getMessage() for r in caplog.records)
        == 3
    )

    # a student that did not finish (its marker is written last): only the student runs again
    (out / "student_r1" / STAGE_FILE).unlink()
    run_pipeline(small_config(small_world, out, *base), resume=True)
    after = _mtimes(out, *stages)
    assert after["teacher"] == before["teacher"] and after["pseudo_r1"] == before["pseudo_r1"]

    # a pseudo-label setting changed: the teacher is reused, the pseudo-labels and student are not
    changed = [*base[:-1], "pseudo.threshold=0.9"]
    third = run_pipeline(small_config(small_world, out, *changed), resume=True)
    now = _mtimes(out, *stages)
    assert now["teacher"] == before["teacher"]
    assert now["pseudo_r1"] != after["pseudo_r1"] and now["student_r1"] != after["student_r1"]
    summary = json.loads((out / "pseudo_r1" / "summary.json").read_text())
    assert summary["n_selected"] == third["n_pseudo"] <= first["n_pseudo"]

    # a model setting changed: everything runs again
    run_pipeline(small_config(small_world, out, *changed, "model.dropout=0.2"), resume=True)
    assert _mtimes(out, "teacher")["teacher"] != before["teacher"]


def test_a_stage_that_fails_leaves_no_finished_marker(tmp_path):
    stage = tmp_path / "student_r1"
    stage.mkdir()
    reuse_or_run(stage, "student_r1", "fp1", False, lambda: {"joint": 0.5})
    assert json.loads((stage / STAGE_FILE).read_text()) == {
        "fingerprint": "fp1",
        "result": {"joint": 0.5},
    }

    def crash():
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        reuse_or_run(stage, "student_r1", "fp2", True, crash)
    assert not (stage / STAGE_FILE).exists()  # the next --resume runs it again
    assert reuse_or_run(stage, "student_r1", "fp2", True, lambda: {"joint": 0.6}) == {"joint": 0.6}
