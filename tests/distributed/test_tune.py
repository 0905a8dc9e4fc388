"""`meiju-ray tune`: a real 4-trial Tune sweep (ASHA, MLflow sqlite, `mlflow server`) and bad input.

One sweep (module fixture) over pseudo.threshold x head split on the small world is shared by the
assertions and the UI test; it is the slow part, mostly Tune's per-trial start-up.
"""

from __future__ import annotations

import csv
import json
import time
import urllib.request
from pathlib import Path

import pytest

from meiju_ray.config import ConfigError, load_config
from tests.conftest import REPO, SMALL_MODS
from tests.servers import mlflow_server

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
SWEEP = REPO / "experiments" / "sweep_smoke.yaml"
MODS = SMALL_MODS  # data.modalities=... for the small-dims worlds


# the sweep these tests were built on (the ASHA dynamics below); sweep_smoke.yaml's own grid suits
# its own, smaller world
TEST_SPACE = (
    "{pseudo.threshold: {grid: [0.5, 0.95]}, head_split: {keys: [model.heads_emo_to_int, "
    "model.heads_int_to_emo], grid: [[4, 2], [1, 1]]}}"
)


def sweep_config(world: Path, out: Path, *overrides: str):
    """experiments/sweep_smoke.yaml pointed at a small-dims world."""
    return load_config(
        SWEEP, [f"data.root={world}", f"output_dir={out}", f"data.modalities={MODS}", *overrides]
    )


@pytest.fixture(scope="module")
def sweep(ray_cluster, small_world, tmp_path_factory):
    """4 trials: pseudo.threshold {0.5, 0.95} x head split {4/2, 1/1}, 4 epochs, ASHA.

    ASHA has grace period 1 and reduction factor 2. The teacher is trained by run_tune itself
    (4 epochs). At threshold 0.5 about 50 pool rows join the 340 gold rows, so those students take
    more steps per epoch and lead at ASHA's first rung; trials run two at a time in grid order, so
    the 0.95 pair meets a rung that already holds the 0.5 pair and at least one of them is stopped
    after epoch 1.
    """
    from meiju_ray.distributed.tune import run_tune

    root = tmp_path_factory.mktemp("sweep")
    cfg = sweep_config(
        small_world,
        root / "runs" / "sweep",
        f"data.cache_dir={root / 'packed'}",
        "tracking.experiment=sweep-test",
        "tracking.register_model=meiju-sweep-test",
        f"tune.search_space={TEST_SPACE}",
    )
    t0 = time.time()
    report = run_tune(cfg)
    return cfg, report, time.time() - t0


def test_sweep_outputs_trials_and_mlflow_runs(sweep):
    from mlflow import MlflowClient

    from meiju_ray.tracking.tracker import download_model
    from meiju_ray.train import checkpoint

    cfg, report, seconds = sweep
    out = Path(cfg.output_dir)
    print(f"sweep of 4 trials: {seconds:.1f}s")

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 == report["n_trials"]
    assert {
        (r["pseudo.threshold"], r["model.heads_emo_to_int"], r["model.heads_int_to_emo"])
        for r in rows
    } == {("0.5", "4", "2"), ("0.5", "1", "1"), ("0.95", "4", "2"), ("0.95", "1", "1")}
    stopped = [r for r in rows if r["stopped_early"] == "True"]
    assert stopped, "ASHA stopped no trial"
    assert all(int(r["iterations"]) < 4 for r in stopped)
    assert all(int(r["iterations"]) == 4 for r in rows if r["stopped_early"] == "False")
    assert {int(r["n_pseudo"]) for r in rows if r["pseudo.threshold"] == "0.5"} != {
        0
    }  # re-thresholded per trial
    assert all(r["error"] == "" for r in rows)

    # best.yaml is a ready-to-run experiment with the best values
    best = load_config(out / "best.yaml")
    assert best.pseudo.threshold == report["best_params"]["pseudo.threshold"]
    assert best.model.heads_emo_to_int == report["best_params"]["model.heads_emo_to_int"]
    assert best.tune.search_space == {} and best.output_dir == f"{out}_best"
    best_row = next(r for r in rows if r["trial_id"] == report["best_trial_id"])
    assert best_row["stopped_early"] == "False"
    assert float(best_row["best_val_joint"]) == pytest.approx(report["best_metric"])
    assert report["best_metric"] == pytest.approx(
        max(float(r["best_val_joint"]) for r in rows if r["stopped_early"] == "False")
    )
    assert {Path(p).name for p in report["plots"]} == {
        "best_val_joint_vs_pseudo.threshold.png",
        "best_val_joint_vs_head_split.png",
    }
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["plots"])

    # MLflow: one FINISHED child run per trial under the sweep's parent, params = swept values
    client = MlflowClient(report["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("sweep-test")
    parent = report["mlflow"]["parent_run_id"]
    trials = client.search_runs([exp.experiment_id], f"tags.sweep_parent = '{parent}'")
    assert len(trials) == 4
    by_trial = {r.data.tags["trial_id"]: r for r in trials}
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.params == {
            "pseudo.threshold": row["pseudo.threshold"],
            "model.heads_emo_to_int": row["model.heads_emo_to_int"],
            "model.heads_int_to_emo": row["model.heads_int_to_emo"],
        }
        history = client.get_metric_history(run.info.run_id, "val_joint")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
            range(1, int(row["iterations"]) + 1)
        )
        # the run's name says what it tried; its best epoch is a metric to sort by
        thr = float(row["pseudo.threshold"])
        heads = f"{row['model.heads_emo_to_int']}/{row['model.heads_int_to_emo']}"
        assert run.info.run_name.startswith(f"threshold={thr:g} head_split={heads} [")
        assert run.data.metrics["best_val_joint"] == pytest.approx(float(row["best_val_joint"]))
        assert max(m.value for m in history) == pytest.approx(float(row["best_val_joint"]))
        assert run.data.tags["stopped_early"] == row["stopped_early"].lower()
    stages = {
        r.info.run_name: r
        for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    }
    assert {"teacher", "pseudo_label"} <= set(stages)
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    # what the sweep records: a description, the data it read, the code's commit on every run
    note = parent_run.data.tags["mlflow.note.content"]
    assert note.startswith(f"Sweep '{cfg.tune.name}' of 4 {cfg.tune.trial} trials")
    assert report["best_trial_id"] in note
    assert {
        {t.key: t.value for t in d.tags}["split"] for d in parent_run.inputs.dataset_inputs
    } == {"Training", "Validation", "NoAnnotation"}
    assert report["mlflow"]["experiment_id"] == exp.experiment_id  # `tune` prints the runs link
    commit = parent_run.data.tags.get("mlflow.source.git.commit")
    assert all(r.data.tags.get("mlflow.source.git.commit") == commit for r in by_trial.values())
    # the parent shows what was swept, not the base values no trial used
    assert parent_run.data.params["pseudo.threshold"].startswith("swept (pseudo.threshold): grid")
    assert parent_run.data.params["model.heads_emo_to_int"].startswith("swept (head_split)")
    assert parent_run.data.params["train.lr"] == str(cfg.train.lr)
    teacher_curve = client.get_metric_history(stages["teacher"].info.run_id, "val_joint")
    assert min(m.step for m in teacher_curve) == 1  # the same step convention as the trials
    # the report judges its winner
    assert report["runner_up_trial_id"] in by_trial and report["margin_over_runner_up"] >= 0
    assert isinstance(report["warnings"], list)
    assert {"trials.csv", "best.yaml", "plots"} <= {a.path for a in client.list_artifacts(parent)}
    # the best trial's model is logged and registered, and loads back
    best_run = report["mlflow"]["best_run_id"]
    assert best_run == by_trial[report["best_trial_id"]].info.run_id
    # ... as an MLflow model of the best trial's run (Logged models), registered with its alias
    (output,) = client.get_run(best_run).outputs.model_outputs
    assert client.get_logged_model(output.model_id).name == "model"
    reg = report["mlflow"]["registered_model"]
    assert reg["name"] == "meiju-sweep-test" and reg["version"] >= 1
    assert reg["uri"] == "models:/meiju-sweep-test@champion"
    model_dir = download_model(
        reg["uri"], out.parent / "dl", tracking_uri=report["mlflow"]["tracking_uri"]
    )
    _, loaded, meta = checkpoint.load(model_dir)
    assert loaded.model.heads_emo_to_int == best.model.heads_emo_to_int
    assert meta["val"]["joint"] == pytest.approx(report["best_metric"])


def test_existing_sweep_needs_resume_and_resume_of_a_finished_sweep_reports_again(sweep):
    from meiju_ray.distributed.tune import run_tune

    cfg, report, _ = sweep
    with pytest.raises(ValueError, match="already exists.*--resume"):
        run_tune(cfg)
    again = run_tune(cfg, resume=True)  # Tuner.restore: nothing left to run, same trials and best
    assert again["best_trial_id"] == report["best_trial_id"] and again["n_trials"] == 4
    assert again["mlflow"]["parent_run_id"] == report["mlflow"]["parent_run_id"]
    with pytest.raises(ValueError, match="no sweep to resume"):
        run_tune(
            load_config(SWEEP, [f"data.root={cfg.data.root}", f"output_dir={cfg.output_dir}x"]),
            resume=True,
        )


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_mlflow_ui_server_lists_the_sweep_runs(sweep):
    cfg, report, _ = sweep
    with mlflow_server(report["mlflow"]["tracking_uri"], timeout=60) as base:
        with urllib.request.urlopen(
            base + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=sweep-test", timeout=10
        ) as resp:
            exp_id = json.loads(resp.read())["experiment"]["experiment_id"]
        parent = report["mlflow"]["parent_run_id"]
        runs = _post(
            base + "/api/2.0/mlflow/runs/search",
            {
                "experiment_ids": [exp_id],
                "filter": f"tags.sweep_parent = '{parent}'",
                "order_by": ["metrics.val_joint DESC"],
            },
        )["runs"]
        assert len(runs) == 4
        assert all(r["info"]["status"] == "FINISHED" for r in runs)
        names = {p["key"] for p in runs[0]["data"]["params"]}
        assert names == {"pseudo.threshold", "model.heads_emo_to_int", "model.heads_int_to_emo"}


# ---- bad input: a ConfigError naming the key before any trial (or Ray) starts --------------------


@pytest.mark.parametrize(
    "space, key",
    [
        ("{model.headz: {choice: [1, 2]}}", "model.headz"),
        ("{train.lr: {choice: [fast]}}", "train.lr"),
        ("{split: {keys: [model.heads_emo_to_int, model.nope], grid: [[1, 1]]}}", "model.nope"),
        (
            "{split: {keys: [model.heads_emo_to_int, model.heads_int_to_emo], choice: [[3, 1]]}}",
            "heads_emo_to_int",
        ),
        ("{data.root: {choice: [a, b]}}", "data.root"),
    ],
)
def test_bad_search_space_key_fails_before_any_trial(tmp_path, space, key):
    from meiju_ray.distributed.tune import run_tune

    cfg = load_config(
        SWEEP,
        [
            f"data.root={tmp_path / 'no-world'}",
            f"output_dir={tmp_path / 'out'}",
            f"tune.search_space={space}",
        ],
    )
    with pytest.raises(ConfigError, match=f"tune.search_space.*{key}"):
        run_tune(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{uniform: [1, 0]}", r"tune.search_space.pseudo.threshold.uniform': needs lo < hi"),
        ("{loguniform: [0, 1]}", r"tune.search_space.pseudo.threshold.loguniform': needs lo > 0"),
        ("{uniform: [0.5]}", r"tune.search_space.pseudo.threshold.uniform': expected \[lo, hi\]"),
        ("{choice: []}", r"tune.search_space.pseudo.threshold.choice': the list is empty"),
        ("{normal: [0, 1]}", r"tune.search_space.pseudo.threshold': unknown distribution 'normal'"),
        (
            "{choice: [0.5], uniform: [0, 1]}",
            r"tune.search_space.pseudo.threshold': expected exactly one",
        ),
    ],
)
def test_bad_distribution_fails_at_load(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config(
            SWEEP, [f"output_dir={tmp_path}", f"tune.search_space={{pseudo.threshold: {spec}}}"]
        )


def test_bad_tune_settings_and_cli_exit_code(tmp_path, capsys):
    from meiju_ray.cli import main

    for override, key in (
        ("tune.scheduler=hyperband", "tune.scheduler"),
        ("tune.reduction_factor=1", "tune.reduction_factor"),
        ("tune.cpus_per_trial=0", "tune.cpus_per_trial"),
        ("tune.trial=teacher", "tune.trial"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(SWEEP, [override])
    code = main(
        [
            "tune",
            str(SWEEP),
            f"output_dir={tmp_path / 'out'}",
            "tune.search_space={model.headz: {grid: [1]}}",
        ]
    )
    assert code == 2 and "tune.search_space.model.headz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_optuna_is_optional(tmp_path):
    import importlib.util

    from meiju_ray.distributed.tune import run_tune

    with pytest.raises(ConfigError, match="grid is not supported with tune.search_alg=optuna"):
        load_config(SWEEP, ["tune.search_alg=optuna"])
    if importlib.util.find_spec("optuna") is not None:
        pytest.skip("optuna is installed")
    cfg = load_config(
        SWEEP,
        [
            f"output_dir={tmp_path / 'out'}",
            "tune.search_alg=optuna",
            "tune.search_space={pseudo.threshold: {uniform: [0.5, 0.99]}}",
        ],
    )
    with pytest.raises(ConfigError, match="optuna is not installed"):
        run_tune(cfg)
    assert not (tmp_path / "out").exists()
