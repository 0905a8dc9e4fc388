"""Run by tests/distributed/test_multinode.py in its own process: a Ray cluster of several nodes on
this machine (Ray's own harness, ray.cluster_utils.Cluster: one raylet per node, each with its own
CPUs), then the work the test names; prints one JSON line of results.

    python -m tests.distributed.multinode_probe pseudo_then_ddp <pool world> <teacher> <cache>
        <ddp output dir> <ddp world>

A process of its own because a driver joins one cluster for its lifetime, and the test session's
other Ray tests share a single-node one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from meiju_ray.distributed.cluster import apply_env_defaults

apply_env_defaults()  # token auth on, as everywhere

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from meiju_ray.data.layout import UNLABELED  # noqa: E402
from meiju_ray.data.packing import pack_split  # noqa: E402
from meiju_ray.distributed.pseudo_label import infer_pool  # noqa: E402
from tests.conftest import small_config  # noqa: E402

NODE = {"num_cpus": 2, "object_store_memory": 150 * 2**20}


def _actor_nodes() -> dict[str, str]:
    """ALIVE Ray Data map actors -> the node each runs on (the GCS's actor table)."""
    return {
        actor_id: a["Address"]["NodeID"]
        for actor_id, a in ray._private.state.actors().items()
        if a["State"] == "ALIVE" and "MapWorker" in a["ActorClassName"]
    }


def pseudo_then_ddp(world: str, teacher: str, cache: str, out: str, ddp_world: str) -> dict:
    """Both scenarios on one cluster (one start-up): pseudo-labelling on three nodes, one of them
    removed mid-run; then DDP with one worker per node, and a worker's node removed mid-run."""
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    cluster.add_node(**NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    result = pseudo(cluster, world, teacher, cache)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    return {**result, **ddp_node_lost(cluster, ddp_world, out, cache)}


def _train_worker_nodes() -> set[str]:
    return {
        a["Address"]["NodeID"]
        for a in ray._private.state.actors().values()
        if a["State"] == "ALIVE" and "RayTrainWorker" in a["ActorClassName"]
    }


def ddp_node_lost(cluster, world: str, out: str, cache: str) -> dict:
    """2 DDP workers of 2 CPUs on nodes of 2 CPUs (one worker per node) plus a spare node; after
    three persisted checkpoints the (non-head) node of a worker is removed: Ray Train restarts the
    worker group on the nodes left and resumes from the latest checkpoint."""
    from meiju_ray.distributed.train import run_distributed

    spare = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    cfg = small_config(
        world,
        out,
        f"data.cache_dir={cache}",
        "train.epochs=6",
        "train.patience=0",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=2",
        "scaling.max_failures=1",
        "tracking.enabled=false",
    )
    storage = Path(out) / "ray_train"
    lost: dict = {}

    def remove_a_worker_node() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = sum(
                1 for d in storage.glob("*/checkpoint_*") if (d / "train_state.pt").is_file()
            )
            hosts = _train_worker_nodes()
            lost["worker_nodes"] = len(hosts)
            if done >= 3:
                for node in [*cluster.worker_nodes, spare]:
                    if node.node_id in hosts:
                        cluster.remove_node(node, allow_graceful=False)
                        lost["after_checkpoints"] = done
                        return
            time.sleep(0.2)

    remover = threading.Thread(target=remove_a_worker_node, daemon=True)
    remover.start()
    metrics = run_distributed(cfg)
    remover.join(5)
    history = json.loads((Path(out) / "history.json").read_text())
    return {
        "ddp_joint": metrics["joint"],
        "ddp_worker_nodes": lost.get("worker_nodes"),
        "ddp_node_removed_after_checkpoints": lost.get("after_checkpoints"),
        "ddp_resumed_from_epoch": metrics.get("resumed_from_epoch"),
        "ddp_epochs": [h["epoch"] for h in history],
    }


def pseudo(cluster, world: str, teacher: str, cache: str) -> dict:
    """Ray Data pseudo-labelling with 3 one-CPU actors on the cluster's nodes of 2 CPUs (so on at
    least two nodes), against the in-process result; then again while the (non-head) node of one
    actor is removed mid-run (a spare node takes its place)."""
    workers = list(cluster.worker_nodes)
    cfg = small_config(
        world,
        f"{cache}/unused",
        f"data.cache_dir={cache}",
        "pseudo.actors=3",
        "pseudo.cpus_per_actor=1",
        "pseudo.batch_size=1",  # slow on purpose: the pass must outlast the node removal
        "data.rows_per_shard=100",
    )
    packed = pack_split(cfg.data, UNLABELED)
    ids0, emo0, int0 = infer_pool(cfg, teacher, packed, "in_process")
    ids1, emo1, int1 = infer_pool(cfg, teacher, packed, "ray_data")
    seen_nodes: set[str] = set()
    removed: dict = {}

    def remove_a_busy_node() -> None:  # once all three actors are up, take a worker node away
        t0 = time.time()
        while time.time() - t0 < 120:
            nodes = _actor_nodes()
            seen_nodes.update(nodes.values())
            if len(nodes) >= 3:
                for node in workers:
                    if node.node_id in nodes.values():
                        cluster.remove_node(node, allow_graceful=False)
                        removed["node"], removed["at"] = node.node_id, time.time()
                        return
            time.sleep(0.05)

    remover = threading.Thread(target=remove_a_busy_node, daemon=True)
    remover.start()
    t0 = time.time()
    ids2, emo2, int2 = infer_pool(cfg, teacher, packed, "ray_data")
    finished = time.time()
    remover.join(5)
    return {
        "n_nodes_with_actors": len(seen_nodes),
        "ids_equal": ids0 == ids1 == ids2,
        "n_rows": len(ids0),
        "n_unique": len(set(ids2)),
        "max_diff_undisturbed": float(max(abs(emo0 - emo1).max(), abs(int0 - int1).max())),
        "max_diff_node_removed": float(max(abs(emo0 - emo2).max(), abs(int0 - int2).max())),
        "removed_before_the_end": bool(removed) and removed["at"] < finished,
        "seconds": round(finished - t0, 1),
    }


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    try:
        result = {"pseudo_then_ddp": pseudo_then_ddp}[scenario](*args)
    except BaseException:
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        os._exit(3)
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()
    # the result is out; a cluster that lost a node can fail its own teardown (lost objects), which
    # is not what the test is about
    os._exit(0)
