"""Does the unlabelled pool pay? Semi-supervised recipes against supervised, over paired seeds.

For every seed the same teacher (the supervised model) labels the pool once per recipe; every
recipe's student, the oracle (the pool with its TRUE labels) and a logistic-regression reference are
scored on the test split against its withheld labels. Reported per recipe: test emo / int / joint
(mean over seeds), the paired gain over supervised with a 95 % t-interval, the gain as a share of
the headroom H = oracle - supervised, pool rows used, pseudo-label precision per class, and wall
time relative to the winner's 0.99 recipe. Results are kept per (seed, recipe) in
runs/bench/ssl/<world>/results.json, so an interrupted run resumes where it stopped.

    python -m benchmarks ssl [--seeds 0 1 2 3 4] [--scale 0.2] [--unlabeled 3000] [--dims small]
    python -m benchmarks ssl --dataset xdd_zh [--seeds ...] [--recipes ...]   # a real corpus

A real corpus (xdd_zh, xdd_en, meld) runs its shipped experiment file (experiments/<dataset>.yaml)
on the importer's root worlds/<dataset> (`meiju-ray import ...`, docs/real_data.md), whose hidden/
keeps the pool's and the Testing split's true labels; each dataset gets its own RESULTS.md section.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BENCH_ROOT, REPO, md_table
from meiju_ray.fileio import replace_dir, write_text_atomic

TITLE = "Semi-supervised learning: gain over supervised on the test split, paired seeds"
RESULTS_FILE = REPO / "RESULTS.md"

# every recipe spells out its noise: the config's defaults are themselves a recipe (soft_kd+pnoise)
NO_NOISE = [
    "augment.frame_mask=0",
    "augment.feature_dropout=0",
    "augment.modality_dropout=0",
    "augment.gaussian_mix=0",
]
WINNER = [
    "pseudo.rule=per_task",
    "pseudo.threshold=0.99",
    "pseudo.targets=hard",
    "pseudo.weighting=constant",
    "pseudo.student_init=scratch",
    *NO_NOISE,
]
NOISE = [
    "augment.apply_to=all",
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
    *NO_NOISE,
]
CLASS_AWARE = [
    "pseudo.rule=adaptive",
    "pseudo.threshold=0.95",
    "pseudo.min_confidence=0.5",
    "pseudo.align=true",
    "pseudo.targets=hard",
    "pseudo.weighting=constant",
    *NO_NOISE,
]
ONLINE = ["pseudo.enabled=false", "consistency.weight=1.0"]  # one stage: no teacher pass
# self-supervised pre-training of encoders + fusion on labelled + pool rows (train/pretrain.py)
PRETRAIN = ["pretrain.epochs=30"]
# recipe name -> (what it is, config overrides of the student stage)
# imported real corpora: name -> (what it is, the command that imports it)
REAL = {
    "xdd_zh": (
        "XDailyDialog, Mandarin text",
        "meiju-ray import xdailydialog --lang zh --out worlds/xdd_zh",
    ),
    "xdd_en": (
        "XDailyDialog, English text",
        "meiju-ray import xdailydialog --lang en --out worlds/xdd_en",
    ),
    "meld": ("MELD, English text, emotion only", "meiju-ray import meld --out worlds/meld"),
}
RECIPES: dict[str, tuple[str, list[str]]] = {
    "winner_0.99": ("winner's recipe: hard labels, calibrated 0.99, student from scratch", WINNER),
    "soft_kd": ("soft-label distillation over the whole pool (T=0.5, confidence-weighted)", SOFT),
    "noisy_student": ("winner's selection + feature noise on the student", WINNER + NOISE),
    "class_aware": (
        "distribution alignment + FlexMatch-style class thresholds, hard labels",
        CLASS_AWARE,
    ),
    "uda_softmatch": (
        "online consistency: EMA teacher, sharpened soft targets, SoftMatch weights (no pass)",
        ONLINE,
    ),
    "fixmatch": (
        "online consistency: EMA teacher, hard targets masked at 0.95 (no pseudo-label pass)",
        ONLINE + ["consistency.targets=hard", "consistency.weighting=mask"],
    ),
    "class_aware+uda": (
        "class-aware pseudo-labels, then online consistency on the pool",
        CLASS_AWARE + ["consistency.weight=1.0"],
    ),
    "soft_kd+noise": ("soft distillation into a noised student", SOFT + NOISE),
    "soft_kd+uda": (
        "soft distillation over the pool plus online consistency (EMA teacher, SoftMatch)",
        SOFT + ["consistency.weight=1.0"],
    ),
    "soft_kd+pnoise": (
        "soft distillation, noise on the pool rows only (augment.apply_to=pseudo)",
        SOFT + NOISE + ["augment.apply_to=pseudo"],
    ),
    "soft_kd+pnoise_r1": (
        "soft distillation, noise on pool rows, each epoch a fresh draw of 1 pool row per gold row",
        SOFT + NOISE + ["augment.apply_to=pseudo", "pseudo.epoch_pool_ratio=1"],
    ),
    "ens3+soft_kd+pnoise_r1": (
        "3-seed teacher ensemble + soft_kd+pnoise_r1",
        SOFT
        + NOISE
        + ["augment.apply_to=pseudo", "pseudo.epoch_pool_ratio=1", "pseudo.teachers=3"],
    ),
    "soft_kd+noise_r1": (
        "soft distillation, every student row noised, a fresh pool draw of 1 row per gold row",
        SOFT + NOISE + ["pseudo.epoch_pool_ratio=1"],
    ),
    "ens3+soft_kd+noise_r1": (
        "3-seed teacher ensemble + soft_kd+noise_r1",
        SOFT + NOISE + ["pseudo.epoch_pool_ratio=1", "pseudo.teachers=3"],
    ),
    "ens3+soft_kd+pnoise": (
        "3-seed teacher ensemble, soft distillation, noise on the pool rows only",
        SOFT + NOISE + ["augment.apply_to=pseudo", "pseudo.teachers=3"],
    ),
    "soft_kd+noise+uda": (
        "soft distillation into a noised student, plus online consistency",
        SOFT + NOISE + ["consistency.weight=1.0"],
    ),
    "teacher_ensemble3": (
        "the 3-seed teacher ensemble itself (an ensembled submission; not an SSL gain)",
        [],
    ),
    "ens3+soft_kd+noise": (
        "a 3-seed teacher ensemble (parallel Ray tasks), soft distillation into a noised student",
        SOFT + NOISE + ["pseudo.teachers=3"],
    ),
    "ens3+soft_kd+noise+uda": (
        "a 3-seed teacher ensemble, soft distillation, noised student, online consistency",
        SOFT + NOISE + ["pseudo.teachers=3", "consistency.weight=1.0"],
    ),
    "soft_kd_t1": (
        "soft distillation, teacher temperature 1 (no sharpening)",
        SOFT + ["pseudo.soft_temperature=1.0"],
    ),
    "soft_kd_init": (
        "soft distillation, student starts from the teacher",
        SOFT + ["pseudo.student_init=teacher"],
    ),
    "soft_kd_2r": (
        "soft distillation, two rounds (the student teaches the next)",
        SOFT + ["pseudo.rounds=2"],
    ),
    "soft_kd+noise+align": (
        "soft distillation, aligned teacher, noised student",
        SOFT + NOISE + ["pseudo.align=true"],
    ),
    "pretrain": (
        "self-supervised pre-training (NT-Xent between noised views of labelled + pool rows), "
        "then the supervised model from it; no pseudo-labels",
        PRETRAIN + ["pseudo.enabled=false"],
    ),
    "pretrain+ens3+soft_kd+noise": (
        "the default (ens3+soft_kd+noise) with every teacher seed and the student starting from "
        "the pre-trained encoders + fusion",
        PRETRAIN + SOFT + NOISE + ["pseudo.teachers=3"],
    ),
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--dataset",
        choices=("synthetic", *REAL),
        default="synthetic",
        help="synthetic (a generated world: --scale/--unlabeled/--dims) or an imported real corpus",
    )
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


def section_name(args) -> str:
    """The RESULTS.md section this run writes: one per dataset (and per synthetic dims)."""
    if args.dataset == "synthetic":
        return "ssl" if args.dims == "small" else f"ssl_{args.dims}"
    return f"ssl_{args.dataset}"


def section_title(args) -> str:
    if args.dataset == "synthetic":
        return TITLE if args.dims == "small" else f"{TITLE}: Track 1 dims (A512/V342/L768)"
    return f"{TITLE}: {REAL[args.dataset][0]}"


def _world(args) -> Path:
    from meiju_ray.data.synth import SMALL_MODALITIES, write_world

    if args.dataset != "synthetic":
        root = REPO / "worlds" / args.dataset
        if not (root / "hidden" / "NoAnnotation_labels.txt").is_file():
            raise SystemExit(
                f"error: {root} is not an imported {args.dataset} root with withheld labels; "
                f"run: {REAL[args.dataset][1]}"
            )
        return root

    out = BENCH_ROOT / "worlds" / f"ssl_{args.dims}_s{args.scale:g}_u{args.unlabeled}"
    if not (out / "world.json").is_file():
        specs = SMALL_MODALITIES if args.dims == "small" else None
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
    from meiju_ray.data.synth import SMALL_MODALITIES

    common = [
        f"data.root={root}",
        f"output_dir={out}",
        "tracking.enabled=false",
        # one torch thread: two threads fighting other busy processes for 2 cores slow an epoch
        # down 10-50x (OpenMP spin-waits); accuracy does not depend on it
        "train.num_threads=1",
        "pseudo.in_process_below=1000000",
    ]
    if args.dataset != "synthetic":  # the shipped recipe's model and schedule, as users run it
        return load_config(REPO / "experiments" / f"{args.dataset}.yaml", [*common, *overrides])

    mods = []
    if args.dims == "small":
        mods = [
            "data.modalities=["
            + ",".join(
                "{name: %s, folder: %s, dim: %d}" % (m.name, m.folder, m.dim)
                for m in SMALL_MODALITIES
            )
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
            "train.num_threads=1",  # see common above: accuracy does not depend on it
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
    """The logistic-regression reference scored on the test split's true labels."""
    from meiju_ray.data.packing import load_split
    from meiju_ray.train.inference import labelled_test_split
    from meiju_ray.train.reference import logistic_reference

    test = labelled_test_split(cfg)
    return logistic_reference(load_split(cfg.data, cfg.data.train_split), test, seed=cfg.seed)


def _one(name: str, seed: int, root: Path, base: Path, args) -> dict:
    """Train one arm for one seed; return its test scores and bookkeeping."""
    from meiju_ray.distributed.pseudo_label import run_pseudo_label
    from meiju_ray.distributed.train import run_train
    from meiju_ray.pseudo.labelling import load_pseudo_rows
    from meiju_ray.train import checkpoint
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
        pool = _oracle_rows(cfg)
        run_train(cfg, extra_train=pool)
        return {
            "test": hidden_test_scores(out / "checkpoint"),
            "seconds": time.time() - t0,
            "pool_rows": len(pool),
        }
    if name == "teacher_ensemble3":
        ckpt = _ensemble(3, seed, root, base, args)
        return {"test": hidden_test_scores(ckpt), "seconds": time.time() - t0}
    # one teacher unless the recipe says otherwise: the config's default is itself a recipe
    # (ens3+soft_kd+noise)
    cfg = _config(root, out, args, f"seed={seed}", "pseudo.teachers=1", *RECIPES[name][1])
    backbone, pretrain_s = _backbone(cfg, seed, base) if cfg.pretrain.epochs > 0 else (None, 0.0)
    t0 -= pretrain_s  # each arm that uses the seed's backbone is charged for it
    if not cfg.pseudo.enabled:  # a one-stage method (online consistency, pre-training): no pass
        run_train(cfg, init_from=backbone)
        return {
            "test": hidden_test_scores(out / "checkpoint"),
            "seconds": time.time() - t0,
            "pool_rows": len(_oracle_rows(cfg)),
        }
    teacher = teacher_dir / "checkpoint"
    if cfg.pseudo.teachers > 1:
        teacher = _ensemble(cfg.pseudo.teachers, seed, root, base, args, backbone)
    elif backbone is not None:  # the `pretrain` arm's model teaches
        teacher = base / f"seed{seed}" / "pretrain" / "checkpoint"
        if not (teacher / checkpoint.WEIGHTS).is_file():
            arm = _config(root, teacher.parent, args, f"seed={seed}", *RECIPES["pretrain"][1])
            run_train(arm, init_from=backbone)
    for r in range(1, cfg.pseudo.rounds + 1):  # round r's student teaches round r + 1
        labels = out / "pseudo" if r == 1 else out / f"pseudo_round{r}"
        info = run_pseudo_label(cfg, teacher, labels)
        extra = load_pseudo_rows(cfg, labels)
        init = teacher if cfg.pseudo.student_init == "teacher" else backbone
        run_train(cfg, extra_train=extra, init_from=init)
        if r < cfg.pseudo.rounds:
            teacher = out / "teacher_next"
            replace_dir(out / "checkpoint", teacher)
    return {
        "test": hidden_test_scores(out / "checkpoint"),
        "seconds": time.time() - t0,
        "pool_rows": len(extra),
        "precision": {t: info.get(f"{t}_precision") for t in ("emotion", "intent")},
        "accuracy": {t: info.get(f"{t}_accuracy") for t in ("emotion", "intent")},
    }


def _backbone(cfg, seed: int, base: Path) -> tuple[Path, float]:
    """This seed's pre-trained encoders + fusion (trained once per pretrain setting) and the
    seconds it took."""
    from meiju_ray.train import checkpoint
    from meiju_ray.train.pretrain import run_pretrain

    setting = json.dumps(cfg.to_dict()["pretrain"], sort_keys=True)
    out = base / f"seed{seed}" / f"backbone_{hashlib.sha256(setting.encode()).hexdigest()[:8]}"
    if not (out / "checkpoint" / checkpoint.WEIGHTS).is_file():
        run_pretrain(cfg, out)
    return out / "checkpoint", float(checkpoint.read_meta(out / "checkpoint")["seconds"])


def _ensemble(
    n: int, seed: int, root: Path, base: Path, args, backbone: Path | None = None
) -> Path:
    """The n-seed teacher ensemble of this seed (trained once, in parallel Ray tasks); with a
    pre-trained `backbone`, every member starts from it."""
    from meiju_ray.distributed.ensemble import train_teachers
    from meiju_ray.train import checkpoint

    # one ensemble per backbone (its directory names the pretrain setting), none without
    suffix = "" if backbone is None else f"_{backbone.parent.name}"
    out = base / f"seed{seed}" / f"ensemble{n}{suffix}"
    ckpt = out / "teacher" / "checkpoint"
    if not (ckpt / checkpoint.ENSEMBLE).is_file():
        cfg = _config(root, out, args, f"seed={seed}", "train.num_threads=1", "ray.num_cpus=2")
        train_teachers(cfg, out, n, backbone)
    return ckpt


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
            # merged with what is on disk: two processes may run disjoint --seeds of one world
            on_disk = json.loads(store.read_text()) if store.is_file() else {}
            results = {**on_disk, **results}
            write_text_atomic(store, json.dumps(results, indent=1))
            print(
                f"[ssl] seed {seed}: {name} test joint {results[key]['test']['joint']:.4f}",
                flush=True,
            )
    results = {**json.loads(store.read_text()), **results}  # other processes' seeds
    seeds = args.seeds
    n_pool = results[f"{seeds[0]}/oracle"]["pool_rows"]

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
    if args.dataset != "synthetic":
        return (
            f"{REAL[args.dataset][0]} (`experiments/{args.dataset}.yaml` on "
            f"`worlds/{args.dataset}`, {n_pool} pool rows); seeds {seeds} (each seed: its own "
            f"teacher, the same for every recipe); headroom H = oracle - supervised = "
            f"{headroom:+.4f} test joint.\n\n"
            f"{table}\n\n{legend}\n"
        )
    return (
        f"World `{root.name}` ({args.dims} dims, labelled scale {args.scale:g}, "
        f"{args.unlabeled} pool "
        f"rows); seeds {seeds} (each seed: its own teacher, the same for every recipe); headroom "
        f"H = oracle - supervised = {headroom:+.4f} test joint.\n\n{table}\n\n{legend}\n"
    )
