"""Pseudo-labelling memory check: does the Ray Data pass stay bounded as the pool grows?

    python -m benchmarks.pseudo_label_memory --rows 10000 100000

For each pool size it writes a packed unlabelled pool directly as Parquet shards (small feature
dims, Track-1-like lengths), runs `pseudo_label.infer_pool` with a teacher trained for one epoch
on a tiny synthetic world, and samples the summed PSS of the driver and every process of its Ray session
while it runs. Prints rows/s and peak memory per size.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def pss_of_session(session_dir: str) -> int:
    """Summed PSS (bytes) of this process and every process of this Ray session.

    PSS, not RSS: the object store is shared memory that every worker maps, and RSS would count
    it once per process. Processes of other Ray clusters on the machine are left out.
    """
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if int(pid) != os.getpid() and session_dir.encode() not in cmd:
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def write_pool(out: Path, rows: int, modalities, shard_rows: int = 512, seed: int = 0) -> Path:
    from meiju_ray.packing import rows_to_table, write_shards
    rng = np.random.default_rng(seed)

    def tables():
        for start in range(0, rows, shard_rows):
            n = min(shard_rows, rows - start)
            frames = {m.name: [rng.standard_normal((int(t), m.dim), dtype=np.float32)
                               for t in rng.integers(1, 60, n)] for m in modalities}
            yield rows_to_table([f"u{start + i:07d}" for i in range(n)], [-1] * n, [-1] * n, frames, modalities)
    return write_shards(tables(), out, {"split": "NoAnnotation", "rows": rows})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args(argv)

    import ray

    from meiju_ray.config import ExperimentConfig
    from meiju_ray.pseudo_label import infer_pool
    from meiju_ray.ray_env import init_ray
    from meiju_ray.synth import ModalitySpec, write_world
    from meiju_ray.training import run_train

    tmp = Path(tempfile.mkdtemp(prefix="plmem-"))
    specs = (ModalitySpec("A", "a", 32, 4, 60, 20), ModalitySpec("V", "v", 16, 1, 30, 8), ModalitySpec("L", "l", 48, 3, 30, 10))
    write_world(tmp / "world", seed=0, scale=0.02, unlabeled=10, modalities=specs)
    cfg = ExperimentConfig.from_dict({
        "output_dir": str(tmp / "teacher"), "data": {"root": str(tmp / "world"),
        "modalities": [{"name": s.name, "folder": s.folder, "dim": s.dim} for s in specs]},
        "model": {"hidden": 32, "fusion_heads": 2, "heads_emo_to_int": 2, "heads_int_to_emo": 2},
        "train": {"epochs": 1, "num_threads": 1}, "pseudo": {"actors": args.actors}, "tracking": {"enabled": False}})
    run_train(cfg)
    init_ray(cfg.ray)
    ray.data.DataContext.get_current().enable_progress_bars = False
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    results = []
    for rows in args.rows:
        pool = write_pool(tmp / f"pool{rows}", rows, cfg.data.modalities)
        peak, done = [pss_of_session(session)], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(pss_of_session(session))
                time.sleep(0.2)
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.time()
        ids, emo, _ = infer_pool(cfg, Path(cfg.output_dir) / "checkpoint", pool)
        seconds = time.time() - t0
        done.set()
        thread.join()
        assert len(ids) == rows and emo.shape == (rows, 7)
        results.append({"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
                        "peak_pss_gb": round(max(peak) / 2**30, 2), "pool_gb": round(sum(
                            f.stat().st_size for f in pool.glob("*.parquet")) / 2**30, 2)})
        print(json.dumps(results[-1]), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
