"""A SIGKILLed pipeline (issue "Reliability", item 11): its MLflow parent and stage runs are left
RUNNING by the kill; the next pipeline in the same output_dir ends them KILLED (real processes,
a real sqlite store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from meiju_ray.cli import main
from tests.conftest import REPO, SMALL_MODS

EXE = str(Path(sys.executable).parent / "meiju-ray")


def pipeline_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pipeline",
        str(REPO / "experiments" / "smoke.yaml"),
        f"data.root={root}",
        f"output_dir={out}",
        f"data.modalities={SMALL_MODS}",
        f"data.cache_dir={out.parent / 'packed'}",
        "pseudo.enabled=false",  # the teacher is all this needs
        "tracking.experiment=killed",
        *extra,
    ]


def kill_during_the_teacher(args: list[str]) -> None:
    """Run the pipeline in its own process group and SIGKILL it once the teacher trains."""
    proc = subprocess.Popen([EXE, *args], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stderr:
            if "epoch 1/" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_next_pipeline_ends_a_killed_pipelines_runs(tiny_world, tmp_path, capsys):
    out = tmp_path / "runs" / "pipe"
    kill_during_the_teacher(pipeline_args(tiny_world, out, "train.epochs=100000"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("killed").experiment_id
    left = {r.data.tags.get("stage"): r for r in client.search_runs([experiment])}
    assert {left[s].info.status for s in ("pipeline", "teacher")} == {"RUNNING"}  # by the kill

    assert main(["-q", *pipeline_args(tiny_world, out, "train.epochs=1")]) == 0
    killed = [left["pipeline"].info.run_id, left["teacher"].info.run_id]
    assert [client.get_run(r).info.status for r in killed] == ["KILLED", "KILLED"]
    runs = client.search_runs([experiment])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    new = next(r for r in parents if r.info.run_id != killed[0])
    assert len(parents) == 2 and new.info.status == "FINISHED"
    teachers = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == new.info.run_id]
    assert [r.info.status for r in teachers] == ["FINISHED"]
