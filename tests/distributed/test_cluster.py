"""Jobs and clusters: `ray job submit` of a sweep to a real `ray start --head` (token auth), and
cluster.yaml checked by Ray's own launcher validation (no cloud calls).

The head is this test's own: its own --temp-dir, ports and token file, started under its own
session and stopped by killing that process group, never with `ray stop` (which would also stop the
session fixture's cluster and anyone else's Ray on the machine). It does not write
/tmp/ray/ray_current_cluster, so plain `ray.init()` calls elsewhere do not find it.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SMALL_MODS

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block`, token auth, on free ports; yields (dashboard URL, client env)."""
    temp_dir = tempfile.mkdtemp(prefix="rh-")  # short: Ray's socket paths must stay < 108 chars
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(secrets.token_hex(32))
    gcs, client, dashboard, agent = _free_ports(4)
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
    )
    log = open(Path(temp_dir) / "head.log", "w")
    t0 = time.time()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent}",
            "--dashboard-host=127.0.0.1",
            f"--object-store-memory={256 * 2**20}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        while _get(url + "/api/jobs/", token_file.read_text()) != 200:
            assert head.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            assert time.time() - t0 < 90, "ray head did not come up in 90 s"
            time.sleep(1)
        print(f"ray start --head: {time.time() - t0:.1f}s")
        yield url, env
    finally:
        try:  # the whole head (gcs, raylet, dashboard, workers) only, like Ctrl-C
            os.killpg(head.pid, signal.SIGINT)
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_sweep_with_token_auth_lands_in_mlflow(ray_head, small_world, tmp_path):
    """The job runs in a temp copy of the repo; MEIJU_RAY_ROOT anchors its relative paths and its
    relative sqlite URI, so outputs and MLflow runs land under tmp_path."""
    from mlflow import MlflowClient

    url, env = ray_head
    assert _get(url + "/api/jobs/", None) == 401  # token auth is on
    (tmp_path / "worlds").mkdir()
    (tmp_path / "worlds" / "small").symlink_to(small_world)
    mods = SMALL_MODS
    entrypoint = [  # ray job submit shell-quotes each word into the entrypoint string
        "meiju-ray",
        "-q",
        "tune",
        "experiments/sweep_smoke.yaml",
        "data.root=worlds/small",
        "output_dir=runs/job_sweep",
        f"data.modalities={mods}",
        "tracking.uri=sqlite:///runs/jobs.db",
        "tracking.experiment=job-sweep",
        "tune.trial=train",
        "train.epochs=2",
        "tune.search_space={model.heads_emo_to_int: {grid: [1, 2]}}",
    ]
    submission_id = f"meiju-test-{secrets.token_hex(4)}"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        url,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"env_vars": {"MEIJU_RAY_ROOT": str(tmp_path)}}),
        "--",
        *entrypoint,
    ]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        subprocess.run(
            [str(BIN / "ray"), "job", "stop", "--address", url, submission_id], env=env, timeout=60
        )
        raise
    print(f"ray job submit (2-trial sweep): {time.time() - t0:.1f}s")
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, (
        proc.stdout + proc.stderr
    )[-4000:]

    out = tmp_path / "runs" / "job_sweep"
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 1 + 2
    assert (out / "best.yaml").is_file() and (out / "best_model" / "model.pt").is_file()
    db = tmp_path / "runs" / "jobs.db"
    assert db.is_file(), "the relative sqlite URI was not anchored at MEIJU_RAY_ROOT"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("job-sweep")
    assert exp.artifact_location.startswith(str(tmp_path))  # not in the job's temp working dir
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert sorted(r.data.params["model.heads_emo_to_int"] for r in trials) == ["1", "2"]
    parent = next(r for r in runs if r.data.tags.get("stage") == "sweep")
    assert parent.info.status == "FINISHED" and "trials.csv" in {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


# ---- cluster.yaml: Ray's own schema + cross-field validation, offline ----------------------------


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates(cluster):
    _validate(cluster)
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert "GPU" not in head["resources"]
    workers = [
        n for k, n in cluster["available_node_types"].items() if k != cluster["head_node_type"]
    ]
    assert any(
        n["resources"].get("GPU")
        and n["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        and n["min_workers"] == 0
        for n in workers
    )
    start = " ".join(cluster["head_start_ray_commands"])
    assert (
        "mlflow server" in start
        and "--backend-store-uri" in start
        and "--artifacts-destination s3://" in start
    )
    assert "RAY_AUTH_MODE=token" in start and "MEIJU_RAY_ROOT=" in start
    assert any("pip install" in c and "meiju_ray" in c for c in cluster["setup_commands"])
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    text = (REPO / "cluster.yaml").read_text()
    assert not any(
        k in text for k in ("lr:", "epochs:", "threshold:", "search_space")
    )  # no hyper-parameters


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: c.update(setup_command=["echo"]), "setup_command"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0), "min_worker"),
        (
            lambda c: c.update(head_node_type="head_gpu"),
            "`head_node_type` must be one of `available_node_types`",
        ),
        (
            lambda c: c["available_node_types"].pop(c["head_node_type"]),
            "`head_node_type` must be one of",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(resources={"GPU": "one"}),
            "'one' is not of type",
        ),
    ],
)
def test_broken_cluster_yaml_fails_validation(cluster, breakage, message):
    broken = copy.deepcopy(cluster)
    breakage(broken)
    with pytest.raises(Exception, match=message):
        _validate(broken)


def test_private_cluster_admits_only_clients_with_its_token(ray_cluster, tmp_path):
    """The session's private cluster runs with Ray's token authentication: a process without the
    token (auth disabled, or a wrong token) cannot join it; one with the token can. (Ray 2.60's
    GCS and raylet listen on every interface whatever node IP is given, measured; the token is
    what keeps another host out.)"""
    address = ray_cluster.get_runtime_context().gcs_address
    code = f"import ray; ray.init(address={address!r}); print('joined', flush=True)"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}

    def joins(**env: str) -> bool:
        run = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return run.returncode == 0 and "joined" in run.stdout

    assert not joins(RAY_AUTH_MODE="disabled")
    assert not joins(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert joins(RAY_AUTH_MODE="token")  # the token the private cluster's first start wrote
    token = Path(os.path.expanduser("~/.ray/auth_token"))
    assert token.stat().st_mode & 0o077 == 0  # not readable by other local users
