"""Does the unlabelled pool pay? Semi-supervised recipes against supervised, over paired seeds.

For every seed the same teacher (the supervised model) labels the pool once per recipe; every
recipe's student, the oracle (the pool with its TRUE labels) and a logistic-regression reference are
scored on the test split against its withheld labels. Reported per recipe: test emo / int / joint
(mean over seeds), the paired gain over supervised with a 95 % t-interval, the gain as a share of
the headroom H = oracle - supervised, pool rows used, pseudo-label precision per class, and wall
time relative to the winner's 0.99 recipe. Results are kept per (seed, recipe) in
runs/bench/ssl/<world>/results.json, so an interrupted run resumes where it stopped.

    python -m benchmarks ssl [--seeds 0 1 2 3 4] [--scale 0.2] [--unlabeled 3000] [--dims small]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BENCH_ROOT, REPO, md_table

TITLE = "Semi-supervised learning: gain over supervised on the test split, paired seeds"
RESULTS_FILE = REPO / "RESULTS.md"

WINNER = [
    "pseudo.rule=per_task",
    "pseudo.threshold=0.99",
    "pseudo.targets=hard",
    "pseudo.student_init=scratch",
]
NOISE = [
    "augment.frame_mask=0.2",
    "augment.feature_dropout=0.1",
    "augment.modality_dropout=0.15",
    "augment.gaussian_mix=0.1",
]
SOFT = [
    "pseudo.rule=per_task",
    "pseudo.threshold=0.0",
    "pseudo.targets=soft",
    "pseudo.weighting=confidence",
    "pseudo.soft_temperature=0.5",
]
# recipe name -> (what it is, config overrides of the student stage)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "winner_0.99": ("winner's recipe: hard labels, calibrated 0.99, student from scratch", WINNER),
    "soft_kd": ("soft-label distillation over the whole pool (T=0.5, confidence-weighted)", SOFT),
    "noisy_student": ("winner's selection + feature noise on the student", WINNER + NOISE),
    "class_aware": (
        "distribution alignment + FlexMatch-style class thresholds, hard labels",
        [
            "pseudo.rule=adaptive",
            "pseudo.threshold=0.95",
            "pseudo.min_confidence=0.5",
            "pseudo.align=true",
            "pseudo.targets=hard",
        ],
    ),
    "soft_kd+noise": ("soft distillation into a noised student", SOFT + NOISE),
    "soft_kd+noise+align": (
        "soft distillation, aligned teacher, noised student",
        SOFT + NOISE + ["pseudo.align=true"],
    ),
}
SMALL_DIMS = (
    ("A", "wav2vec", 24, 4, 40, 14),
    ("V", "ResNet-50", 12, 1, 20, 6),
    ("L", "RoBERTa", 32, 3, 16, 7),
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--scale", type=float, default=0.2, help="labelled sizes x Track 1 Mandarin")
    p.add_argument("--unlabeled", type=int, default=3000, help="pool rows")
    p.add_argument(
        "--dims",
        choices=("small", "track1"),
        default="small",
        help="small: reduced feature dims (minutes); track1: A512/V342/L768",
    )
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--epochs", type=int, default=30)


def _world(args) -> Path:
    from meiju_ray.data.synth import ModalitySpec, write_world

    out = BENCH_ROOT / "worlds" / f"ssl_{args.dims}_s{args.scale:g}_u{args.unlabeled}"
    if not (out / "world.json").is_file():
        specs = [ModalitySpec(*s) for s in SMALL_DIMS] if args.dims == "small" else None
        write_world(
            out,
            seed=0,
            scale=args.scale,
            unlabeled=args.unlabeled,
            **({"modalities": specs} if specs else {}),
        )
    return out


def _config(root: Path, out: Path, args, *overrides: str):
    from meiju_ray.config import load_config

    mods = []
    if args.dims == "small":
        mods = [
            "data.modalities=["
            + ",".join("{name: %s, folder: %s, dim: %d}" % (s[0], s[1], s[2]) for s in SMALL_DIMS)
            + "]"
        ]
    return load_config(
        REPO / "experiments" / "track1_mandarin.yaml",
        [
            f"data.root={root}",
            f"output_dir={out}",
            "tracking.enabled=false",
            *mods,
            "model.hidden=64",
            "model.fusion_heads=4",
            "model.heads_emo_to_int=4",
            "model.heads_int_to_emo=2",
            "model.fusion_ff=128",
            "model.classifier=[64]",
            f"train.epochs={args.epochs}",
            "train.patience=8",
            "train.num_threads=2",
            "pseudo.in_process_below=1000000",
            *overrides,
        ],
    )


def _oracle_rows(cfg):
    """The whole pool with its withheld true labels (what perfect pseudo-labels would give)."""
    from meiju_ray.data.layout import UNLABELED, resolve
    from meiju_ray.data.packing import load_split, with_withheld_labels

    truth = resolve(cfg.data.root, cfg.data.unlabeled_truth)
    return with_withheld_labels(load_split(cfg.data, UNLABELED), truth, cfg.data)


def _reference(cfg) -> dict:
    """The logistic-regression reference scored on the test split's withheld labels."""
    from meiju_ray.data.layout import resolve
    from meiju_ray.data.packing import load_split, with_withheld_labels
    from meiju_ray.train.reference import logistic_reference

    truth = resolve(cfg.data.root, "hidden/Testing_labels.txt")
    test = with_withheld_labels(load_split(cfg.data, cfg.data.test_split), truth, cfg.data)
    return logistic_reference(load_split(cfg.data, cfg.data.train_split), test, seed=cfg.seed)


def _one(name: str, seed: int, root: Path, base: Path, args) -> dict:
    """Train one arm for one seed; return its test scores and bookkeeping."""
    from meiju_ray.distributed.pseudo_label import run_pseudo_label
    from meiju_ray.distributed.train import run_train
    from meiju_ray.pseudo.labelling import load_pseudo_rows
    from meiju_ray.train.inference import hidden_test_scores

    teacher_dir = base / f"seed{seed}" / "supervised"
    out = base / f"seed{seed}" / name
    t0 = time.time()
    if name == "reference":
        return {"test": _reference(_config(root, out, args, f"seed={seed}")), "seconds": 0.0}
    if name == "supervised":
        cfg = _config(root, out, args, f"seed={seed}")
        run_train(cfg)
        return {"test": hidden_test_scores(out / "checkpoint"), "seconds": time.time() - t0}
    if name == "oracle":
        cfg = _config(root, out, args, f"seed={seed}")
        run_train(cfg, extra_train=_oracle_rows(cfg))
        return {
            "test": hidden_test_scores(out / "checkpoint"),
            "seconds": time.time() - t0,
            "pool_rows": args.unlabeled,
        }
    cfg = _config(root, out, args, f"seed={seed}", *RECIPES[name][1])
    info = run_pseudo_label(cfg, teacher_dir / "checkpoint", out / "pseudo")
    extra = load_pseudo_rows(cfg, out / "pseudo")
    init = teacher_dir / "checkpoint" if cfg.pseudo.student_init == "teacher" else None
    run_train(cfg, extra_train=extra, init_from=init)
    return {
        "test": hidden_test_scores(out / "checkpoint"),
        "seconds": time.time() - t0,
        "pool_rows": len(extra),
        "precision": {t: info.get(f"{t}_precision") for t in ("emotion", "intent")},
        "accuracy": {t: info.get(f"{t}_accuracy") for t in ("emotion", "intent")},
    }


def ci95(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and the 95 % t-interval of paired differences."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def _precision_text(entry_list: list[dict]) -> str:
    """Mean pseudo-label precision per emotion class over seeds, e.g. 'neu .91 hap .80 ...'."""
    table: dict[str, list[float]] = {}
    for entry in entry_list:
        for label, value in ((entry.get("precision") or {}).get("emotion") or {}).items():
            if value is not None:
                table.setdefault(label, []).append(value)
    return " ".join(f"{k[:3]} {np.mean(v):.2f}" for k, v in table.items()) or "-"


def run(args) -> str:
    root = _world(args)
    base = BENCH_ROOT / "ssl" / root.name
    base.mkdir(parents=True, exist_ok=True)
    store = base / "results.json"
    results: dict = json.loads(store.read_text()) if store.is_file() else {}
    arms = ["reference", "supervised", "oracle", *args.recipes]
    for seed in args.seeds:
        for name in arms:
            key = f"{seed}/{name}"
            if key in results:
                continue
            print(f"[ssl] seed {seed}: {name}", flush=True)
            results[key] = _one(name, seed, root, base, args)
            store.write_text(json.dumps(results, indent=1))
            print(
                f"[ssl] seed {seed}: {name} test joint {results[key]['test']['joint']:.4f}",
                flush=True,
            )
    seeds = args.seeds

    def joint(name: str, seed: int) -> float:
        return results[f"{seed}/{name}"]["test"]["joint"]

    headroom = float(np.mean([joint("oracle", s) - joint("supervised", s) for s in seeds]))
    winner_s = (
        np.mean([results[f"{s}/winner_0.99"]["seconds"] for s in seeds])
        if "winner_0.99" in args.recipes
        else float("nan")
    )
    rows = []
    for name in arms:
        entries = [results[f"{s}/{name}"] for s in seeds]
        mean = {k: np.mean([e["test"][k] for e in entries]) for k in ("emo", "int", "joint")}
        if name == "supervised":
            gain_text, share = "-", "-"
        else:
            g, lo, hi = ci95([joint(name, s) - joint("supervised", s) for s in seeds])
            gain_text = f"{g:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            share = f"{g / headroom:.0%}" if headroom > 0 else "-"
        pool = np.mean([e.get("pool_rows", 0) for e in entries])
        secs = np.mean([e["seconds"] for e in entries])
        rel = f"{secs / winner_s:.2f}x" if name in RECIPES and winner_s == winner_s else "-"
        rows.append(
            [
                name,
                f"{mean['emo']:.4f}",
                f"{mean['int']:.4f}",
                f"{mean['joint']:.4f}",
                gain_text,
                share,
                f"{pool:.0f}",
                _precision_text(entries) if name in RECIPES else "-",
                rel,
            ]
        )
    table = md_table(
        [
            "recipe",
            "test emo",
            "test int",
            "test joint",
            "gain vs supervised [95% CI]",
            "share of H",
            "pool rows used",
            "emotion pseudo-label precision",
            "time vs 0.99",
        ],
        rows,
    )
    legend = "\n".join(f"- `{k}`: {v[0]}" for k, v in RECIPES.items() if k in args.recipes)
    return (
        f"World `{root.name}` ({args.dims} dims, labelled scale {args.scale:g}, "
        f"{args.unlabeled} pool "
        f"rows); seeds {seeds} (each seed: its own teacher, the same for every recipe); headroom "
        f"H = oracle - supervised = {headroom:+.4f} test joint.\n\n{table}\n\n{legend}\n"
    )
