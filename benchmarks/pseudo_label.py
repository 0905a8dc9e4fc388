"""Pseudo-labelling throughput and memory: plain one-process loop vs Ray Data with 1 and 2 actors.

For each pool size a packed unlabelled pool is written directly as Parquet shards (random features,
Track 1 Mandarin lengths; dims `track1` = A512/V342/L768, ~280 KB a row, or `small` = A32/V16/L48
so that 100k rows fit on a laptop disk), a teacher is trained for one epoch on a small world with
the same dims, and the same teacher labels the pool three ways:
  plain   one process: read each shard with pyarrow, `predict_probs` (what a script would do)
  ray-1   `pseudo_label.infer_pool` with pseudo.actors=1 (Ray Data from_items(shard paths) ->
          map_batches over an actor pool whose actors read their shards and return probabilities)
  ray-2   the same with pseudo.actors=2
  auto    what the product does by default (`pseudo_label.inference_engine`): in-process below
          pseudo.in_process_below rows on a private local Ray, else Ray Data with the experiment's
          actors
Each mode runs --repeats times (Ray started afresh each time) and the table keeps the fastest pass.
Peak memory is the summed PSS of this process and all its descendant processes (the local Ray
cluster), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BENCH_ROOT, PeakMemory, md_table

TITLE = "4. Pseudo-labelling: plain loop vs Ray Data (1 and 2 actors), 10k / 100k rows"
DIMS = {
    "track1": (
        ("A", "wav2vec", 512, 8, 300, 90),
        ("V", "ResNet-50", 342, 1, 120, 30),
        ("L", "RoBERTa", 768, 3, 60, 18),
    ),
    "small": (
        ("A", "wav2vec", 32, 8, 300, 90),
        ("V", "ResNet-50", 16, 1, 120, 30),
        ("L", "RoBERTa", 48, 3, 60, 18),
    ),
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument(
        "--dims",
        choices=list(DIMS),
        nargs="+",
        default=["track1", "small"],
        help="one per --rows entry (the last one repeats): "
        "track1 needs ~2.8 GB of disk per 10k rows",
    )
    p.add_argument("--modes", nargs="+", default=["plain", "ray-1", "ray-2", "auto"])
    p.add_argument(
        "--batch-size", type=int, default=256, help="pseudo.batch_size (rows per inference call)"
    )
    p.add_argument(
        "--shard-rows", type=int, default=1024, help="rows per Parquet shard (data.rows_per_shard)"
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="passes per mode; the table shows the fastest"
    )


def _specs(dims: str):
    from meiju_ray.data.synth import ModalitySpec

    return tuple(ModalitySpec(*s) for s in DIMS[dims])


def write_pool(out: Path, rows: int, specs, shard_rows: int = 1024, seed: int = 0) -> Path:
    """A packed NoAnnotation pool of random features with Track 1 length distributions, in shards of
    `shard_rows` rows (the packer's default, data.rows_per_shard)."""
    from meiju_ray.config import ModalityConfig
    from meiju_ray.data.packing import rows_to_table, write_shards

    if (out / "manifest.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    modalities = [ModalityConfig(s.name, s.folder, s.dim) for s in specs]
    rng = np.random.default_rng(seed)

    def tables():
        for start in range(0, rows, shard_rows):
            n = min(shard_rows, rows - start)
            frames = {}
            for s in specs:
                lens = np.clip(rng.poisson(s.mean_len, n), s.min_len, s.max_len)
                frames[s.name] = [
                    rng.standard_normal((int(t), s.dim), dtype=np.float32) for t in lens
                ]
            yield rows_to_table(
                [f"u{start + i:07d}" for i in range(n)], [-1] * n, [-1] * n, frames, modalities
            )

    t0 = time.time()
    path = write_shards(tables(), out, {"split": "NoAnnotation", "rows": rows})
    print(f"[bench] wrote a {rows}-row pool in {time.time() - t0:.0f}s -> {out}", flush=True)
    return path


def teacher(dims: str, base: Path):
    """One-epoch teacher on a small synthetic world of these dims (its quality does not matter)."""
    from benchmarks.common import REPO
    from meiju_ray.config import load_config
    from meiju_ray.data.synth import write_world
    from meiju_ray.distributed.train import run_train

    specs = _specs(dims)
    world = base / f"world_{dims}"
    if not (world / "world.json").is_file():
        shutil.rmtree(world, ignore_errors=True)
        write_world(world, seed=0, scale=0.05, unlabeled=10, modalities=specs)
    mods = (
        "[" + ",".join(f"{{name: {s.name}, folder: {s.folder}, dim: {s.dim}}}" for s in specs) + "]"
    )
    cfg = load_config(
        REPO / "experiments" / "track1_mandarin.yaml",
        [
            f"data.root={world}",
            f"output_dir={base / f'teacher_{dims}'}",
            f"data.modalities={mods}",
            "train.epochs=1",
            "train.num_threads=1",
            "tracking.enabled=false",
        ],
    )
    if not (Path(cfg.output_dir) / "checkpoint" / "model.pt").is_file():
        run_train(cfg)
    return cfg, Path(cfg.output_dir) / "checkpoint"


def plain_loop(cfg, checkpoint_dir: Path, pool: Path, batch_size: int) -> int:
    """The one-process reference: the actors' per-shard code (`TeacherPredictor`), without Ray."""
    from meiju_ray.data.packing import shard_files
    from meiju_ray.pseudo.labelling import TeacherPredictor, pool_columns, shard_plan

    predictor = TeacherPredictor(str(checkpoint_dir), pool_columns(cfg), "cpu", 1, batch_size)
    return sum(
        len(predictor({"path": [item["path"]], "rows": [item["rows"]]})["id"])
        for item in shard_plan(shard_files(pool))
    )


def one_run(
    mode: str, cfg, ckpt: Path, pool: Path, rows: int, batch_size: int
) -> tuple[str, tuple]:
    """(mode label, (inference seconds, Ray start seconds, rows labelled, peak PSS GB)) per pass."""
    import dataclasses

    import ray
    import torch

    from meiju_ray.distributed.cluster import init_ray
    from meiju_ray.distributed.pseudo_label import infer_pool, inference_engine

    torch.set_num_threads(1)
    if mode == "plain":
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            n = plain_loop(cfg, ckpt, pool, batch_size)
            seconds = time.perf_counter() - t0
        return mode, (seconds, 0.0, n, mem.peak_gb)
    actors = cfg.pseudo.actors if mode == "auto" else int(mode.split("-")[1])
    c = dataclasses.replace(
        cfg,
        pseudo=dataclasses.replace(
            cfg.pseudo, actors=actors, cpus_per_actor=0.5, batch_size=batch_size
        ),
    )
    engine = inference_engine(c, rows) if mode == "auto" else "ray_data"
    t0 = time.perf_counter()
    if engine == "ray_data":
        init_ray(c.ray)
    startup = time.perf_counter() - t0
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        ids, _, _ = infer_pool(c, ckpt, pool, engine)
        seconds = time.perf_counter() - t0
    ray.shutdown()
    if mode == "auto":
        mode = f"auto: {engine}" + (f", {actors} actors" if engine == "ray_data" else "")
    return mode, (seconds, startup, len(ids), mem.peak_gb)


def run(args: argparse.Namespace) -> str:
    base = BENCH_ROOT / "pseudo_label"
    base.mkdir(parents=True, exist_ok=True)
    rows_out = []
    dims_list = args.dims + [args.dims[-1]] * (len(args.rows) - len(args.dims))
    for rows, dims in zip(args.rows, dims_list):
        cfg, ckpt = teacher(dims, base)
        pool = write_pool(
            base / f"pool_{dims}_{rows}_r{args.shard_rows}", rows, _specs(dims), args.shard_rows
        )
        gb = sum(f.stat().st_size for f in pool.glob("*.parquet")) / 2**30
        for mode in args.modes:
            label, runs = mode, []
            for _ in range(max(1, args.repeats)):
                label, run_ = one_run(mode, cfg, ckpt, pool, rows, args.batch_size)
                runs.append(run_)
            # best of N (the machine is shared and noisy)
            seconds, startup, n = min(r[:3] for r in runs)
            peak = max(r[3] for r in runs)
            assert n == rows, (mode, n, rows)
            rows_out.append(
                [
                    f"{rows:,}",
                    dims,
                    f"{gb:.1f}",
                    label,
                    round(seconds, 1),
                    round(rows / seconds),
                    round(startup, 1),
                    peak,
                ]
            )
            print(rows_out[-1], flush=True)
    table = md_table(
        [
            "pool rows",
            "dims",
            "pool GB (Parquet)",
            "mode",
            "seconds",
            "rows/s",
            "Ray start s",
            "peak PSS GB",
        ],
        rows_out,
    )
    return table + "\n" + verdicts(rows_out)


def verdicts(rows_out: list[list]) -> str:
    """The targets, computed from the table."""
    lines = []
    by = {(r[0], r[3]): r for r in rows_out}
    for size in dict.fromkeys(r[0] for r in rows_out):
        plain, r1, r2 = by.get((size, "plain")), by.get((size, "ray-1")), by.get((size, "ray-2"))
        if plain and r1:
            ratio = plain[5] / r1[5]
            lines.append(
                f"- {size} rows: plain / Ray 1 actor = {ratio:.2f}x slower for Ray "
                f"(target <= 1.5x: {'PASS' if ratio <= 1.5 else 'FAIL'})"
            )
        if r1 and r2:
            speedup = r2[5] / r1[5]
            lines.append(
                f"- {size} rows: Ray 2 actors / 1 actor = {speedup:.2f}x (target >= 1.5x: "
                f"{'PASS' if speedup >= 1.5 else 'FAIL'})"
            )
        auto = next((r for r in rows_out if r[0] == size and r[3].startswith("auto")), None)
        if plain and auto:
            lines.append(
                f"- {size} rows: the product's default ({auto[3]}) takes "
                f"{plain[5] / auto[5]:.2f}x the plain loop's time"
            )
    mems = {r[0]: r[7] for r in rows_out if r[3] == "ray-1"}
    if len(mems) >= 2:
        sizes = list(mems)
        lines.append(
            f"- peak memory, Ray 1 actor: {', '.join(f'{s} rows {mems[s]} GB' for s in sizes)} "
            "(target: flat in the pool size)"
        )
    return "\n".join(lines) + "\n"
