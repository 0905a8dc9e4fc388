"""Jobs and clusters: the documented local walkthrough (token, `ray start --head`, `ray job submit`
of the smoke sweep) run as written, and cluster.yaml checked by Ray's own launcher validation (no
cloud calls).

The head is this test's own: its own HOME (token), --temp-dir and ports, started under its own
session and stopped by killing that process group, never with `ray stop` (which would also stop the
session fixture's cluster and anyone else's Ray on the machine).
"""

from __future__ import annotations

import copy
import os
import re
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

from tests.conftest import REPO

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


DOC = REPO / "docs" / "sweeps_and_clusters.md"


def walkthrough_blocks() -> list[str]:
    """The bash blocks of the doc's §3 (local walkthrough), in order: synth, head, submit, ui."""
    section = DOC.read_text().split("## 3. Local walkthrough", 1)[1].split("\n## 4.", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def _copy_checkout(dst: Path) -> Path:
    """The tracked files of this checkout (what a fresh clone has), without its runs/ or worlds/."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    return dst


def test_local_walkthrough_runs_as_documented(tmp_path):
    """docs/sweeps_and_clusters.md §3, command for command, in a copy of the checkout with its own
    HOME (so `ray get-auth-token --generate` writes a fresh ~/.ray/auth_token) and a client
    environment without RAY_AUTH_MODE: the doc's own exports must be what turns token auth on.
    Only the ports (and Ray's temp dir, for short socket paths) differ from the doc; the head is
    stopped like Ctrl-C in terminal 1, never with `ray stop`."""
    from mlflow import MlflowClient

    synth, head_block, submit_block = walkthrough_blocks()[:3]
    assert "ray get-auth-token --generate" in head_block and "--block" in head_block
    assert (
        "export RAY_AUTH_MODE=token" in head_block and "export RAY_AUTH_MODE=token" in submit_block
    )
    repo = _copy_checkout(tmp_path / "checkout")
    home = tmp_path / "home"
    home.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="rw-")  # short: Ray's socket paths must stay < 108 chars
    gcs, client_port, dashboard = _free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home))

    def bash(script: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-euc", script],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    done = bash(synth, 120)
    assert done.returncode == 0, done.stderr[-2000:]
    head_script = head_block.replace(
        "ray start --head",
        f"ray start --head --port={gcs} --ray-client-server-port={client_port} "
        f"--dashboard-port={dashboard} --temp-dir={temp_dir} --object-store-memory={256 * 2**20}",
    )
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        ["bash", "-euc", head_script],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    token_file = home / ".ray" / "auth_token"
    try:
        t0 = time.time()
        while not token_file.is_file() or _get(url + "/api/jobs/", token_file.read_text()) != 200:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.time() - t0 < 120, "ray head did not come up in 120 s"
            time.sleep(1)
        print(f"ray start --head: {time.time() - t0:.1f}s")
        assert _get(url + "/api/jobs/", None) == 401  # token auth is on

        t0 = time.time()
        done = bash(submit_block.replace("127.0.0.1:8265", f"127.0.0.1:{dashboard}"), 480)
        print(f"ray job submit (sweep_smoke) + ray job list: {time.time() - t0:.1f}s")
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "succeeded" in output, output[-4000:]
        assert "SUCCEEDED" in output  # `ray job list` saw the finished job

        # a client without the doc's export is refused
        refused = bash(f"ray job list --address {url}", 60)
        assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr
    finally:
        try:  # the whole head (gcs, raylet, dashboard, workers) only, like Ctrl-C in terminal 1
            os.killpg(head.pid, signal.SIGINT)
            head.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)

    # the results are where the doc says, and the MLflow store is the checkout's runs/mlflow.db
    out = repo / "runs" / "sweep_smoke"
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 1 + 4
    assert (out / "best.yaml").is_file()
    client = MlflowClient(f"sqlite:///{repo / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep_smoke")
    assert exp.artifact_location.startswith(str(repo))  # not in the job's temp working dir
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    parent = next(r for r in runs if r.data.tags.get("stage") == "sweep")
    assert parent.info.run_name == "sweep:smoke" and parent.info.status == "FINISHED"


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
