"""End to end: the pipeline at Track 1 scale (teacher -> pseudo-label 10k -> student), per stage.

`meiju-ray pipeline experiments/track1_mandarin.yaml` (paper model, calibrated per-task 0.99 bar;
the pool is labelled in-process below pseudo.in_process_below rows, else by the experiment's Ray
Data actors) on a fresh Track-1-Mandarin-sized synthetic world with a 10k pool, MLflow tracking on
(sqlite under the run directory), from a cold packed cache: the first stage that touches a split
packs it. The per-stage seconds are the pipeline's own `stage_seconds` (metrics.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from benchmarks.common import BENCH_ROOT, PeakMemory, config, md_table, test_scores, world

TITLE = "6. End to end: teacher -> pseudo-label 10k -> student at Track 1 scale"
STAGES = {
    "ray_start": "start a local Ray cluster",
    "reference": "pack Training + Validation, logistic reference",
    "teacher": "teacher (paper model, labelled rows only)",
    "pseudo_r1": "pack the pool, teacher inference "
    "(in-process below pseudo.in_process_below rows, else Ray Data), calibrate, select",
    "load_pseudo_rows_r1": "read the selected rows back",
    "student_r1": "student (labelled + pseudo-labelled rows)",
    "predict": "pack Testing, write submission.csv",
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--unlabeled", type=int, default=10_000)
    p.add_argument(
        "--override", nargs="*", default=[], help="extra key=value, e.g. pseudo.threshold=0.9"
    )


def run(args: argparse.Namespace) -> str:
    import ray

    from meiju_ray.data.packing import cache_root
    from meiju_ray.pipeline import run_pipeline

    root = world(args.scale, unlabeled=args.unlabeled)
    out = BENCH_ROOT / "end_to_end" / "run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = config(root, out, "paper", "tracking.enabled=true", *args.override)
    shutil.rmtree(cache_root(cfg.data), ignore_errors=True)  # cold: packing is part of a first run
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        metrics = run_pipeline(cfg)
    wall = time.perf_counter() - t0
    ray.shutdown()
    stages = metrics["stage_seconds"]
    rows = [
        [f"`{k}`", STAGES.get(k, ""), round(v, 1), f"{v / wall:.0%}"] for k, v in stages.items()
    ]
    rows.append(["**total**", "", round(wall, 1), "100%"])
    table = md_table(["stage", "what", "seconds", "share"], rows)
    p = metrics["rounds"][0]["pseudo"] if metrics["rounds"] else {}
    test = test_scores(out / "student_r1" / "checkpoint", root) if metrics["rounds"] else {}
    teacher_test = test_scores(out / "teacher" / "checkpoint", root)
    (out / "bench.json").write_text(
        json.dumps({"wall": wall, "metrics": metrics}, indent=2, default=str)
    )
    return (
        f"World: synthetic, scale {args.scale:g} of Track 1 Mandarin, "
        f"{args.unlabeled:,} unlabelled rows; overrides: {' '.join(args.override) or 'none'}. "
        f"Peak memory (PSS of this process + Ray workers): {mem.peak_gb} GB.\n\n"
        + table
        + "\n"
        + md_table(
            ["model", "val emo", "val int", "val joint", "test joint (hidden labels)"],
            [
                [
                    "logistic reference",
                    round(metrics["reference_logistic"]["emo"], 3),
                    round(metrics["reference_logistic"]["int"], 3),
                    round(metrics["reference_logistic"]["joint"], 3),
                    "–",
                ],
                [
                    "teacher",
                    round(metrics["teacher"]["emo"], 3),
                    round(metrics["teacher"]["int"], 3),
                    round(metrics["teacher"]["joint"], 3),
                    round(teacher_test["joint"], 3),
                ],
                [
                    f"student (+{metrics['n_pseudo']} pseudo-labelled rows)",
                    round(metrics["student"]["emo"], 3),
                    round(metrics["student"]["int"], 3),
                    round(metrics["student"]["joint"], 3),
                    round(test["joint"], 3) if test else "–",
                ],
            ],
        )
        + f"\nPseudo-labels: {p.get('n_selected')} of {p.get('n_rows')} pool rows selected "
        f"(emotion {p.get('n_emotion_kept')}, intent {p.get('n_intent_kept')}); "
        f"accuracy against the withheld labels: "
        f"emotion {p.get('emotion_accuracy')}, intent {p.get('intent_accuracy')}.\n"
    )
