"""`meiju-ray ui`: the MLflow UI on the project's tracking store, bound to 127.0.0.1 by default.

Runs `mlflow server` with one worker and MLflow's job runner off (a default server starts many
more processes and takes far more memory; docs: ray-mlflow-notes §6).
"""

from __future__ import annotations

import os
import shutil
import sys

from meiju_ray.tracking.tracker import SQLITE


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    mlflow = shutil.which(
        "mlflow", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    base = [mlflow] if mlflow else [sys.executable, "-m", "mlflow"]
    cmd = base + [
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if uri.startswith(SQLITE):  # new experiments created from the UI keep artifacts beside the db
        cmd += [
            "--default-artifact-root",
            os.path.join(os.path.dirname(uri[len(SQLITE) :]), "mlartifacts"),
        ]
    return cmd


def server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def run_ui(uri: str, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Replace this process with the MLflow server (Ctrl-C stops it)."""
    if uri.startswith(SQLITE) and not os.path.isfile(uri[len(SQLITE) :]):
        raise FileNotFoundError(
            f"no MLflow store at {uri[len(SQLITE) :]} (run a pipeline first, or pass "
            "--tracking-uri)"
        )
    cmd = server_command(uri, host, port)
    print(f"MLflow UI on http://{host}:{port}  (store: {uri})", flush=True)
    os.execvpe(cmd[0], cmd, server_env())
