"""Sweep efficiency: 8 trials, ASHA vs all 8 run to completion; re-thresholding vs re-inference.

    python -m benchmarks sweep [--scale 0.5] [--unlabeled 2000] [--epochs 12]
                               [--override KEY=VALUE ...]

On a synthetic Track 1 Mandarin world (A512/V342/L768):

1. the splits are packed once, a teacher is trained once (`distributed.train.run_train`) and the
   pool is pseudo-labelled once (`pseudo_label.run_pseudo_label`, Ray Data); both are timed on
   their own;
2. the same 8-trial grid (4 `pseudo.threshold` x 2 cross-attention head splits, one seed) is swept
   twice with `tune.run_tune`, once with `tune.scheduler=asha` (grace period 2, reduction factor 2)
   and once with `tune.scheduler=none`. Both get `tune.teacher_checkpoint` and a copy of the stored
   pseudo-label pass, so neither sweep's wall time includes the teacher or the inference. 1 CPU and
   1 torch thread per trial, 2 trials at a time, `train.patience=0` (only ASHA stops trials);
3. re-thresholding the stored calibrated probabilities (`selection.select`, what every trial does)
   for 8 thresholds is timed against re-running the teacher over the pool
   (`pseudo_label.infer_pool`) once per trial (measured `--infer-repeats` times, the mean times 8).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_ROOT, config, md_table, timed, world

TITLE = "5. Sweep efficiency: ASHA vs run to completion; re-thresholding vs re-inference"
THRESHOLDS = [0.5, 0.7, 0.9, 0.99]
HEAD_SPLITS = [[4, 2], [2, 4]]
HEAD_KEYS = ["model.heads_emo_to_int", "model.heads_int_to_emo"]
GRACE, REDUCTION = 2, 2


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scale", type=float, default=0.5, help="world size as a fraction of Track 1 Mandarin"
    )
    p.add_argument("--unlabeled", type=int, default=2000, help="unlabelled pool rows of the world")
    p.add_argument(
        "--epochs",
        type=int,
        default=12,
        help="train.epochs of the teacher and of every trial (ASHA max_t)",
    )
    p.add_argument(
        "--thresholds",
        type=float,
        nargs=4,
        default=THRESHOLDS,
        help="the 4 pseudo.threshold grid values (x 2 head splits = 8 trials)",
    )
    p.add_argument(
        "--infer-repeats",
        type=int,
        default=2,
        help="infer_pool passes to average for the re-inference estimate (x 8 trials)",
    )
    p.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for the teacher and every trial, e.g. model.hidden=32",
    )


def search_space(thresholds: list[float]) -> dict[str, Any]:
    return {
        "pseudo.threshold": {"grid": list(thresholds)},
        "head_split": {"keys": HEAD_KEYS, "grid": HEAD_SPLITS},
    }


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"train.epochs={args.epochs}",
        "train.num_threads=1",
        "train.patience=0",
        *args.override,
    ]


def read_trials(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def trial_key(row: dict[str, Any]) -> tuple:
    """The swept values of a trials.csv row (trial ids differ between the two sweeps)."""
    return (float(row["pseudo.threshold"]), int(row[HEAD_KEYS[0]]), int(row[HEAD_KEYS[1]]))


def num(value: Any) -> float:
    """A trials.csv cell as a float (an errored trial has an empty metric: nan)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def key_label(key: tuple) -> str:
    return f"thr {key[0]:g}, heads {key[1]}/{key[2]}"


def trial_seconds(experiment_dir: str) -> float:
    """Sum over trials of Tune's time_total_s (time inside the trainable: data, model, epochs,
    checkpoint)."""
    total = 0.0
    for result in Path(experiment_dir).glob("trial_*/result.json"):
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        if lines:
            total += float(json.loads(lines[-1]).get("time_total_s", 0.0))
    return total


def sweep(
    root: Path,
    out: Path,
    name: str,
    scheduler: str,
    teacher: Path,
    pseudo_dir: Path,
    args: argparse.Namespace,
    space: dict[str, Any] | None = None,
    epochs: int | None = None,
) -> tuple[dict, float, list[dict[str, str]]]:
    """One run_tune over the grid; the stored pseudo-label pass is copied in so it is reused."""
    from meiju_ray.distributed.tune import run_tune
    from meiju_ray.pseudo.labelling import SUMMARY_FILE

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(pseudo_dir, out / "pseudo")  # summary.json names `teacher`: run_tune reuses it
    assert json.loads((out / "pseudo" / SUMMARY_FILE).read_text())["teacher"] == str(teacher)
    cfg = config(
        root,
        out,
        "paper",
        *base_overrides(args),
        f"train.epochs={epochs or args.epochs}",
        f"tune.name={name}",
        f"tune.scheduler={scheduler}",
        f"tune.grace_period={GRACE}",
        f"tune.reduction_factor={REDUCTION}",
        "tune.num_samples=1",
        "tune.search_alg=random",
        "tune.trial=student",
        "tune.cpus_per_trial=1",
        "tune.max_concurrent_trials=2",
        f"tune.teacher_checkpoint={teacher}",
        f"tune.search_space={json.dumps(space or search_space(args.thresholds))}",
    )
    print(
        f"[bench] sweep {name}: scheduler={scheduler}, "
        f"{cfg.train.epochs} epochs per trial -> {out}",
        flush=True,
    )
    report, seconds = timed(lambda: run_tune(cfg))
    rows = read_trials(report["trials_csv"])
    print(
        f"[bench] sweep {name}: {seconds:.1f}s, "
        f"best {report['metric']} {report['best_metric']:.4f} ({report['best_params']})",
        flush=True,
    )
    return report, seconds, rows


def rethreshold_vs_reinference(
    cfg, teacher: Path, pseudo_dir: Path, repeats: int, lo: float, hi: float
) -> dict[str, Any]:
    """select() on the stored probabilities for 8 thresholds vs infer_pool once per trial."""
    import numpy as np
    import pyarrow.parquet as pq

    from meiju_ray.data.layout import UNLABELED, read_split_list, resolve
    from meiju_ray.data.packing import pack_split
    from meiju_ray.distributed.pseudo_label import infer_pool
    from meiju_ray.pseudo.labelling import PSEUDO_FILE
    from meiju_ray.pseudo.selection import allowed_pairs_from, select

    d = cfg.data
    table = pq.read_table(pseudo_dir / PSEUDO_FILE, columns=["emotion_probs", "intent_probs"])

    def probs(name: str) -> np.ndarray:
        col = table.column(name).combine_chunks()
        return col.flatten().to_numpy().reshape(len(col), -1)

    emo, intent = probs("emotion_probs"), probs("intent_probs")
    labels = read_split_list(
        resolve(d.root, d.annotation_dir) / f"{d.train_split}_files.txt",
        d.emotion_labels,
        d.intent_labels,
    )
    allowed = allowed_pairs_from(
        labels.emotion, labels.intent, len(d.emotion_labels), len(d.intent_labels)
    )
    thresholds = list(np.linspace(lo, hi, 8))
    best = float("inf")
    kept = []
    for _ in range(5):  # best of 5 passes over the 8 thresholds
        t0 = time.perf_counter()
        kept = [
            int(
                select(
                    emo,
                    intent,
                    dataclasses.replace(cfg.pseudo, threshold=float(t)),
                    d.emotion_labels,
                    d.intent_labels,
                    allowed,
                ).selected.sum()
            )
            for t in thresholds
        ]
        best = min(best, time.perf_counter() - t0)
    packed = pack_split(d, UNLABELED)
    infer = []
    for i in range(repeats):
        (ids, _, _), s = timed(lambda: infer_pool(cfg, teacher, packed))
        infer.append(s)
        print(f"[bench] infer_pool pass {i + 1}: {len(ids)} rows in {s:.2f}s", flush=True)
    return {
        "rows": len(emo),
        "select_8": best,
        "select_per_trial": best / 8,
        "kept": kept,
        "infer_passes": infer,
        "infer_per_trial": sum(infer) / len(infer),
        "infer_8": 8 * sum(infer) / len(infer),
    }


def run(args: argparse.Namespace) -> str:
    import ray
    import torch

    from meiju_ray.data.layout import UNLABELED
    from meiju_ray.data.packing import pack_split
    from meiju_ray.distributed.cluster import init_ray
    from meiju_ray.distributed.pseudo_label import run_pseudo_label
    from meiju_ray.distributed.train import run_train

    torch.set_num_threads(1)
    root = world(args.scale, args.unlabeled)
    base = BENCH_ROOT.resolve() / "sweep"  # absolute: run_tune compares teacher paths as strings
    shutil.rmtree(base, ignore_errors=True)  # run_tune refuses an existing sweep dir
    base.mkdir(parents=True)
    cfg = config(root, base / "teacher", "paper", *base_overrides(args))
    d = cfg.data
    _, t_pack = timed(lambda: [pack_split(d, s) for s in (d.train_split, d.val_split, UNLABELED)])
    print(f"[bench] packed the splits in {t_pack:.1f}s", flush=True)
    try:
        teacher_metrics, t_teacher = timed(lambda: run_train(cfg))
        teacher = base / "teacher" / "checkpoint"
        print(
            f"[bench] teacher: {t_teacher:.1f}s, val joint {teacher_metrics['joint']:.4f}",
            flush=True,
        )
        _, t_ray = timed(lambda: init_ray(cfg.ray))
        pseudo_dir = base / "pseudo"
        info, t_pseudo = timed(lambda: run_pseudo_label(cfg, teacher, pseudo_dir))
        print(f"[bench] pseudo-label pass: {t_pseudo:.1f}s ({info['n_rows']} rows)", flush=True)

        # warm-up (not counted): a 1-trial, 1-epoch sweep pays the driver's first Tune/plotting
        # imports and set-up, which would otherwise land on whichever timed sweep runs first
        _, t_warm, _ = sweep(
            root,
            base / "warmup",
            "warmup",
            "none",
            teacher,
            pseudo_dir,
            args,
            space={"pseudo.threshold": {"grid": [args.thresholds[0]]}},
            epochs=1,
        )
        asha, t_asha, rows_asha = sweep(
            root, base / "asha", "asha", "asha", teacher, pseudo_dir, args
        )
        full, t_full, rows_full = sweep(
            root, base / "none", "none", "none", teacher, pseudo_dir, args
        )
        rt = rethreshold_vs_reinference(
            cfg, teacher, pseudo_dir, args.infer_repeats, min(args.thresholds), max(args.thresholds)
        )
    finally:
        ray.shutdown()

    metric = asha["metric"]  # best_val_joint
    n_pool = info["n_rows"]
    para = (
        f"World: scale {args.scale:g} (synthetic Track 1 Mandarin, A512/V342/L768), "
        f"{n_pool} unlabelled rows; "
        f"paper model{' with ' + ', '.join(args.override) if args.override else ''}, "
        f"{args.epochs} epochs per trial, `train.patience=0`. "
        f"The grid: `pseudo.threshold` in {list(args.thresholds)} x head split "
        f"(emotion->intent / intent->emotion heads) in {HEAD_SPLITS} = 8 trials, "
        f"`tune.num_samples=1`, seed 0, 1 CPU and 1 torch thread per trial, 2 trials at a time on "
        f"a local Ray cluster. Teacher and pseudo-label pass ran once before both sweeps "
        f"(times below) and both sweeps reuse them (`tune.teacher_checkpoint` + the stored "
        f"calibrated probabilities), so the sweep times are trials plus Tune's own overhead. "
        f"ASHA: grace period {GRACE} epochs, reduction factor {REDUCTION}, max_t {args.epochs}; "
        f"the ASHA sweep ran first, after an untimed 1-trial, 1-epoch warm-up sweep. "
        f'"trial s" sums Tune\'s `time_total_s` over the trials (inside the trainable); '
        f"the rest of a sweep's wall time is Tune's start-up, trial actors starting, scheduling "
        f"and the report.\n"
    )
    setup = md_table(
        ["stage (once)", "seconds"],
        [
            ["pack train / val / unlabelled splits (cached after the first run)", f"{t_pack:.1f}"],
            [f"teacher ({args.epochs} epochs, 1 thread)", f"{t_teacher:.1f}"],
            ["Ray start", f"{t_ray:.1f}"],
            [
                f"pseudo-label pass ({n_pool} rows: inference + calibration + selection)",
                f"{t_pseudo:.1f}",
            ],
            ["warm-up sweep (1 trial x 1 epoch; not counted)", f"{t_warm:.1f}"],
        ],
    )

    def epochs(rows):
        return sum(int(r["iterations"]) for r in rows)

    def stopped(rows):
        return sum(r["stopped_early"] == "True" for r in rows)

    def best_key(report):
        p = report["best_params"]
        return (float(p["pseudo.threshold"]), int(p[HEAD_KEYS[0]]), int(p[HEAD_KEYS[1]]))

    ts_asha, ts_full = trial_seconds(asha["experiment_dir"]), trial_seconds(full["experiment_dir"])
    sweeps = md_table(
        [
            "sweep",
            "wall s",
            "trial s",
            "trials",
            "stopped early",
            "trial-epochs",
            f"best {metric[5:]}",
            "best trial",
        ],
        [
            [
                "ASHA",
                f"{t_asha:.1f}",
                f"{ts_asha:.1f}",
                len(rows_asha),
                stopped(rows_asha),
                epochs(rows_asha),
                f"{float(asha['best_metric']):.4f}",
                key_label(best_key(asha)),
            ],
            [
                "run to completion",
                f"{t_full:.1f}",
                f"{ts_full:.1f}",
                len(rows_full),
                stopped(rows_full),
                epochs(rows_full),
                f"{float(full['best_metric']):.4f}",
                key_label(best_key(full)),
            ],
        ],
    )

    by_full = {trial_key(r): r for r in rows_full}
    by_asha = {trial_key(r): r for r in rows_asha}
    per_trial = []
    for key in sorted(by_full, key=lambda k: -num(by_full[k][metric])):
        f, a = by_full[key], by_asha.get(key)
        per_trial.append(
            [
                key_label(key),
                f["n_pseudo"],
                f["iterations"],
                f"{num(f[metric]):.4f}",
                a["iterations"] if a else "-",
                f"{num(a[metric]):.4f}" if a else "-",
                ("stopped" if a["stopped_early"] == "True" else "ran to end") if a else "-",
            ]
        )
    trials = md_table(
        [
            "trial",
            "pseudo rows",
            "epochs (full)",
            f"best {metric[5:]} (full)",
            "epochs (ASHA)",
            f"best {metric[5:]} (ASHA)",
            "ASHA",
        ],
        per_trial,
    )

    same = best_key(asha) == best_key(full)
    asha_pick_in_full = num(by_full[best_key(asha)][metric])
    ranks = sorted(by_full, key=lambda k: -num(by_full[k][metric]))
    lines = [
        f"- wall time, run to completion / ASHA: {t_full:.1f}s / {t_asha:.1f}s = "
        f"**{t_full / t_asha:.2f}x**; "
        f"trial seconds {ts_full:.1f} / {ts_asha:.1f} = {ts_full / max(ts_asha, 1e-9):.2f}x; "
        f"trial-epochs {epochs(rows_full)} / {epochs(rows_asha)} = "
        f"{epochs(rows_full) / epochs(rows_asha):.2f}x "
        f"({stopped(rows_asha)} of {len(rows_asha)} trials stopped by ASHA)",
        f"- best {metric[5:]}: ASHA {float(asha['best_metric']):.4f}, "
        f"run to completion {float(full['best_metric']):.4f} "
        f"(difference {float(full['best_metric']) - float(asha['best_metric']):+.4f})",
        (
            f"- ASHA found the same best trial ({key_label(best_key(full))})"
            if same
            else f"- ASHA picked a different trial: {key_label(best_key(asha))}, "
            f"which scored {asha_pick_in_full:.4f} run to "
            f"completion (rank {ranks.index(best_key(asha)) + 1} of {len(ranks)}; the best, "
            f"{key_label(best_key(full))}, scored {float(full['best_metric']):.4f})"
        ),
    ]
    sel = md_table(
        ["per trial", "seconds / trial", "seconds for 8 trials"],
        [
            [
                f"re-threshold the stored probabilities (`selection.select`, {rt['rows']} rows; "
                "best of 5 passes over 8 thresholds)",
                f"{rt['select_per_trial']:.2e}",
                f"{rt['select_8']:.2e}",
            ],
            [
                f"re-run the teacher (`infer_pool`, Ray Data, {cfg.pseudo.actors} actors; mean of "
                f"{len(rt['infer_passes'])} passes: "
                f"{', '.join(f'{s:.2f}s' for s in rt['infer_passes'])}; x 8)",
                round(rt["infer_per_trial"], 2),
                round(rt["infer_8"], 1),
            ],
        ],
    )
    ratio = rt["infer_per_trial"] / rt["select_per_trial"]
    lines_sel = [
        f"- re-inference / re-thresholding per trial: "
        f"{rt['infer_per_trial']:.2f}s / {rt['select_per_trial']:.2e}s = "
        f"**{ratio:,.0f}x** (re-inference excludes the temperature fit and the selection itself, "
        f"which it would also need); rows kept at the 8 thresholds: {rt['kept']}",
        f"- re-inference for the 8 trials would add {rt['infer_8']:.1f}s, "
        f"{100 * rt['infer_8'] / t_full:.0f}% of the run-to-completion sweep's wall time",
    ]
    return (
        para
        + "\n"
        + setup
        + "\n"
        + sweeps
        + "\n"
        + trials
        + "\n"
        + "\n".join(lines)
        + "\n\n"
        + sel
        + "\n"
        + "\n".join(lines_sel)
        + "\n"
    )
