"""Training throughput: samples/s per epoch, local vs Ray Train (1/2 workers), bucketing vs padding.

For the `baseline` preset and the paper model, the same short training (`--epochs`, no early stop)
runs in each mode on the same world; the machine's cores are split so it is never oversubscribed:
  local            one process, torch threads = all cores, length-bucketed batches (the default)
  local, no bucket the same with plain shuffled batches padded to the batch maximum (what the
                   official loader does; masks still make the result correct, only the cost changes)
  Ray Train x1     TorchTrainer, 1 worker with all cores
  Ray Train x2     TorchTrainer, 2 workers (DDP over gloo), cores / 2 threads each; each worker
                   trains on half the rows with half the per-rank batch (the global batch stays 32)
An epoch = one pass over the training rows + validation; samples/s = training rows / epoch seconds,
the median over epochs 2.. (epoch 1 warms up). Ray Train's fixed cost = wall time of the call minus
the sum of its epochs (cluster start, worker start-up, process group, checkpoints at the end).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.common import BENCH_ROOT, config, md_table, world

TITLE = "2. Training throughput: local vs Ray Train (1, 2 workers), bucketing vs padding"
MODES = ["local", "local-nobucket", "raytrain-1", "raytrain-2"]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--presets", nargs="+", default=["baseline", "paper"])
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)


def one(root, preset: str, mode: str, epochs: int) -> dict:
    import ray

    from meiju_ray.distributed.train import run_train

    cores = os.cpu_count() or 1
    over = [f"train.epochs={epochs}", "train.patience=0"]
    if mode.startswith("local"):
        over += [f"train.num_threads={cores}", f"train.bucket_by_length={mode == 'local'}"]
    else:
        workers = int(mode.split("-")[1])
        per = max(1, cores // workers)
        over += [
            f"scaling.num_workers={workers}",
            f"scaling.cpus_per_worker={per}",
            f"train.num_threads={per}",
            f"ray.num_cpus={cores}",
        ]
    out = BENCH_ROOT / "throughput" / f"{preset}_{mode}"
    cfg = config(root, out, preset, *over)
    history: list[dict] = []
    t0 = time.perf_counter()
    metrics = run_train(cfg, on_epoch=lambda e, m, best: history.append(m))
    wall = time.perf_counter() - t0
    if ray.is_initialized():
        ray.shutdown()
    secs = [m["epoch_seconds"] for m in history]
    steady = statistics.median(secs[1:] or secs)
    return {
        "preset": preset,
        "mode": mode,
        "n": metrics["n_train"],
        "epoch_s": steady,
        "samples_s": metrics["n_train"] / steady,
        "fixed_s": wall - sum(secs),
        "wall": wall,
        "joint": metrics["joint"],
    }


def run(args: argparse.Namespace) -> str:
    root = world(args.scale, unlabeled=200)
    results = []
    for preset in args.presets:
        for mode in args.modes:
            r = one(root, preset, mode, args.epochs)
            results.append(r)
            print(r, flush=True)
    rows = []
    for r in results:
        local = next(
            (x for x in results if x["preset"] == r["preset"] and x["mode"] == "local"), None
        )
        rows.append(
            [
                f"`{r['preset']}`",
                r["mode"],
                r["n"],
                round(r["epoch_s"], 2),
                round(r["samples_s"]),
                f"{local['epoch_s'] / r['epoch_s']:.2f}x" if local else "–",
                round(r["fixed_s"], 1) if r["mode"].startswith("raytrain") else "–",
                round(r["wall"], 1),
                round(r["joint"], 3),
            ]
        )
    table = md_table(
        [
            "model",
            "mode",
            "train rows",
            "s/epoch (steady)",
            "samples/s",
            "speed vs local",
            "Ray Train fixed cost s",
            "wall s",
            f"val joint after {args.epochs} epochs",
        ],
        rows,
    )
    notes = []
    for preset in args.presets:
        by = {r["mode"]: r for r in results if r["preset"] == preset}
        if "local" in by and "local-nobucket" in by:
            notes.append(
                f"- `{preset}`: length bucketing saves "
                f"{1 - by['local']['epoch_s'] / by['local-nobucket']['epoch_s']:.0%} "
                f"of an epoch over padding to the batch maximum "
                f"({by['local-nobucket']['epoch_s']:.1f} s -> {by['local']['epoch_s']:.1f} s)."
            )
        if "raytrain-1" in by and "raytrain-2" in by:
            notes.append(
                f"- `{preset}`: Ray Train 2 workers vs 1: "
                f"{by['raytrain-1']['epoch_s'] / by['raytrain-2']['epoch_s']:.2f}x per epoch; "
                f"fixed cost {by['raytrain-1']['fixed_s']:.0f} s / "
                f"{by['raytrain-2']['fixed_s']:.0f} s per call."
            )
    return (
        f"World: synthetic, scale {args.scale:g} of Track 1 Mandarin; "
        f"{args.epochs} epochs per cell, "
        f"{os.cpu_count()} cores split so that threads x processes = cores.\n\n"
        + table
        + "\n"
        + "\n".join(notes)
        + "\n"
    )
