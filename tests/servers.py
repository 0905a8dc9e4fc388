"""A real `mlflow server` for the tests that go through HTTP, as users do with the UI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(uri: str, timeout: float = 90.0) -> Iterator[str]:
    """`mlflow server` (the command `meiju-ray ui` runs) on 127.0.0.1 over the store `uri`; yields
    its base URL once /health answers, and stops its whole process group afterwards."""
    from meiju_ray.tracking.ui import server_command, server_env

    port = free_port()
    proc = subprocess.Popen(
        server_command(uri, "127.0.0.1", port),
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"mlflow server did not come up in {timeout:.0f} s"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
