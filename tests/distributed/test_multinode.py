"""More than one node, on this machine: Ray's own multi-node harness (ray.cluster_utils.Cluster,
a raylet per node with its own CPUs) drives the real pseudo-labelling and Ray Train code in a
process of its own (tests/distributed/multinode_probe.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meiju_ray.data.synth import write_world
from meiju_ray.train.local import run_local
from tests.conftest import REPO, SMALL_SPECS, small_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1000)]


def _probe(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.distributed.multinode_probe", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-6000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def pool_world(tmp_path_factory):
    """A 2,000-row pool: enough work (20 shards, one row per forward pass) for a node to be
    removed while it is being labelled; 57 labelled training rows."""
    out = tmp_path_factory.mktemp("worlds") / "pool"
    write_world(out, seed=7, scale=0.05, unlabeled=2000, modalities=SMALL_SPECS)
    return out


def test_pseudo_labels_and_ddp_on_several_nodes_survive_a_lost_node(
    pool_world, small_world, tmp_path
):
    """Three nodes of 2 CPUs. Pseudo-labelling with 3 one-CPU actors (so on at least two nodes)
    gives the ids and probabilities of an in-process pass; with the node of a running actor
    removed mid-run, Ray restarts the actor on a spare node and reruns its blocks: still every row
    exactly once, the same probabilities. Then Ray Train DDP with 2 workers of 2 CPUs (so one per
    node) loses the node of a worker mid-run: the group restarts on the nodes left, resumes from
    its latest checkpoint and learns."""
    cache = tmp_path / "c"
    cfg = small_config(
        pool_world, tmp_path / "teacher", "train.epochs=2", f"data.cache_dir={cache}"
    )
    run_local(cfg)
    teacher = tmp_path / "teacher" / "checkpoint"
    ddp_out = tmp_path / "ddp"
    got = _probe("pseudo_then_ddp", *map(str, (pool_world, teacher, cache, ddp_out, small_world)))
    print(got)
    assert got["n_nodes_with_actors"] >= 2
    assert got["ids_equal"] and got["n_unique"] == got["n_rows"] > 0
    assert got["max_diff_undisturbed"] < 1e-5
    assert got["removed_before_the_end"], "the node was removed only after the pass had finished"
    assert got["max_diff_node_removed"] < 1e-5
    # DDP: one worker on each of two nodes; the node of one removed after 3 checkpoints; the
    # restarted group resumed from a checkpoint and every epoch is in the history once
    assert got["ddp_worker_nodes"] == 2
    assert got["ddp_node_removed_after_checkpoints"] >= 3
    assert got["ddp_resumed_from_epoch"] >= 1
    assert got["ddp_epochs"] == list(range(6))
    # chance on this world is ~0.15 joint (7 emotions x 8 intents)
    assert got["ddp_joint"] > 0.3
