"""Time to quality: wall time to a validated score, the paper model vs the official code and our
`baseline` preset.

All run in this process (the official code as a subprocess), one after the other, on the same
Track-1-Mandarin-sized synthetic world (2294/324/643 labelled rows, A512/V342/L768, realistic
lengths), with all cores' torch threads:
  official  with --peer: the official baseline code itself (benchmarks/peer.py; never copied
            here), its Track 1 Mandarin recipe: pretrain stage (60 epochs), then the `our` stage
            (60 epochs) initialised from it; best epoch by validation joint, test at that epoch;
            seeded by --peer-seed (its own code seeds nothing, so unseeded runs differ)
  baseline  experiments/baseline.yaml (official topology: per-task LSTM/LSTM/TextCNN encoders,
            its Adam 2e-4 / 15 constant + 45 linear epochs, best epoch by validation joint, no early
            stop; masked and length-bucketed, one stage)
  paper     experiments/track1_mandarin.yaml (shared mask-aware pooling encoders, head-split
            cross-task attention, learned intent fusion; 40 epochs max, early stopping patience 8)
The clock starts before the split is loaded (packing is done once beforehand and reported apart)
and is read after every epoch's validation. "Time to beat X" is the first epoch end whose
validation joint is above X's best; the ratio is X's whole wall time over that, from one run.
Peak memory is sampled PSS (benchmarks.common.PeakMemory).

    python -m benchmarks time_to_quality --peer                    # all three: ~2 h on 2 cores
    python -m benchmarks time_to_quality --peer --presets paper --scale 0.5   # ~45 min (1b)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import (
    BASELINE_REFERENCE,
    BENCH_ROOT,
    PeakMemory,
    config,
    md_table,
    test_scores,
    world,
)

TITLE = "1. Time to quality: `baseline` preset vs paper model (the headline)"
PEER_TITLE = "1b. Time to quality: the official code side by side, on the same world, in one run"


def section_name(args) -> str:
    """`--peer` runs get their own BENCHMARKS.md section, so section 1 keeps its own run."""
    return "time_to_quality_peer" if args.peer else "time_to_quality"


def section_title(args) -> str:
    return PEER_TITLE if args.peer else TITLE


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scale", type=float, default=1.0, help="world size as a multiple of Track 1 Mandarin"
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads (one process at a time: all cores)"
    )
    p.add_argument(
        "--baseline-epochs",
        type=int,
        default=60,
        help="the baseline recipe's 60; fewer for a quick look",
    )
    p.add_argument(
        "--presets",
        nargs="+",
        choices=("baseline", "paper"),
        default=["baseline", "paper"],
        help="which of our models run (the paper model is the one timed against the others)",
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="also run the official baseline code on the same world (benchmarks/peer.py)",
    )
    p.add_argument("--peer-dir", type=Path, default=None, help="the official code (RUN.md)")
    p.add_argument(
        "--peer-python", default=None, help="interpreter for the peer (default: this one)"
    )
    p.add_argument(
        "--peer-repeats",
        type=int,
        default=1,
        help="repeats per stage (shipped scripts: 3; one repeat of both stages is one run)",
    )
    p.add_argument(
        "--peer-epochs",
        type=int,
        default=None,
        help="epochs per peer stage (default: the shipped 60); fewer for a quick look",
    )
    p.add_argument(
        "--peer-seed",
        type=int,
        default=0,
        help="seed of the peer's first repeat (repeat k: seed + k - 1); its code seeds nothing",
    )
    p.add_argument("--override", nargs="*", default=[], help="extra key=value for our runs")


def train_curve(root: Path, out: Path, preset: str, overrides: list[str]) -> dict:
    from meiju_ray.distributed.train import run_train

    cfg = config(root, out, preset, *overrides)
    curve: list[tuple[float, int, float]] = []
    t0 = time.perf_counter()
    with PeakMemory(interval=2.0) as mem:  # as the peer's: sampling must not perturb the clock
        metrics = run_train(
            cfg,
            on_epoch=lambda e, m, best: curve.append(
                (time.perf_counter() - t0, e + 1, m["val_joint"])
            ),
        )
    wall = time.perf_counter() - t0
    epoch_s = [b[0] - a[0] for a, b in zip([(0.0, 0, 0.0)] + curve[:-1], curve)]
    return {
        "preset": preset,
        "curve": curve,
        "wall": wall,
        "metrics": metrics,
        "s_per_epoch": statistics.median(epoch_s[1:] or epoch_s),
        "test": test_scores(out / "checkpoint", root),
        "peak_gb": mem.peak_gb,
    }


def time_to_beat(curve: list[tuple[float, int, float]], score: float) -> tuple[float, int] | None:
    for seconds, epoch, joint in curve:
        if joint > score:
            return seconds, epoch
    return None


def _peer_row(peer: dict) -> list:
    stages = peer["stages"]
    epochs = [s for st in stages for s in st.epoch_seconds[1:]]
    our = [st for st in stages if st.model == "our"][0]
    before_our = sum(st.wall for st in stages if st.model == "pretrain")
    return [
        "official code (pretrain -> our)",
        " + ".join(str(len(st.curve)) for st in stages),
        round(statistics.median(epochs), 1),
        f"{peer['wall'] / 60:.1f} min",
        f"{peer['best_val_joint']:.3f} (our stage, epoch {our.best_epoch})",
        f"{peer['test'][2]:.3f}",
        f"{(before_our + our.best[0]) / 60:.1f} min",
        "–",
        f"{peer['peak_gb']:.2f}",
    ]


def run(args: argparse.Namespace) -> str:
    from meiju_ray.data.packing import load_split

    root = world(args.scale, unlabeled=200)
    base = BENCH_ROOT / "time_to_quality"
    peer = None
    if args.peer:  # first: a peer that cannot run fails before our half hour
        from benchmarks import peer as official

        python = official.peer_python(args.peer_python)
        peer = official.run_official(
            root,
            base / "peer",
            python,
            threads=args.threads,
            repeats=args.peer_repeats,
            epochs=args.peer_epochs,
            peer_dir=args.peer_dir or official.DEFAULT_PEER_DIR,
            seed=args.peer_seed,
        )
    t0 = time.perf_counter()
    cfg = config(root, base / "pack", "paper")
    for split in ("Training", "Validation", "Testing"):
        load_split(cfg.data, split)
    pack_s = time.perf_counter() - t0
    common = [f"train.num_threads={args.threads}", *args.override]
    runs = {}
    if "baseline" in args.presets:
        runs["baseline"] = train_curve(
            root, base / "baseline", "baseline", common + [f"train.epochs={args.baseline_epochs}"]
        )
    if "paper" in args.presets:
        runs["paper"] = train_curve(root, base / "paper", "paper", common)
    baseline, paper = runs.get("baseline"), runs.get("paper")
    # the scores the paper model is timed against: each one's best validation joint
    targets = {}
    if peer:
        targets["official"] = peer["best_val_joint"]
    if baseline:
        targets["baseline"] = baseline["metrics"]["joint"]

    # when the paper model first passed each: (seconds, epoch), or None
    hits = {n: time_to_beat(paper["curve"], t) for n, t in targets.items()} if paper else {}
    beats = " / ".join(
        f"{hit[0] / 60:.2f} min (epoch {hit[1]})" if hit else "never" for hit in hits.values()
    )

    rows = [_peer_row(peer)] if peer else []
    for r in runs.values():
        m = r["metrics"]
        rows.append(
            [
                f"`{r['preset']}` preset" if r is baseline else "paper model (ours)",
                m["epochs_run"],
                round(r["s_per_epoch"], 1),
                f"{r['wall'] / 60:.1f} min",
                f"{m['joint']:.3f} (epoch {m['best_epoch']})",
                f"{r['test']['joint']:.3f}",
                f"{r['curve'][m['best_epoch'] - 1][0] / 60:.1f} min",
                beats if r is paper and beats else "–",
                f"{r['peak_gb']:.2f}",
            ]
        )
    table = md_table(
        [
            "model",
            "epochs run",
            "s/epoch (median)",
            "wall time",
            "best val joint",
            "test joint (hidden labels)",
            "time to its best",
            "time to beat " + (" / ".join(f"the {n}'s best" for n in targets) or "-"),
            "peak memory (GB PSS)",
        ],
        rows,
    )
    lines = [
        f"World: synthetic, scale {args.scale:g} of Track 1 Mandarin (`benchmarks/common.world`), "
        f"packing the three splits once: {pack_s:.1f} s (not in the times below). "
        f"Torch threads: {args.threads} (the official code: OMP_NUM_THREADS={args.threads}).",
        "",
        table,
    ]
    if peer:
        st = peer["stages"]
        lines += [
            f"The official code ran from `{(args.peer_dir or official.DEFAULT_PEER_DIR).name}` "
            f"(never copied into this project): {args.peer_repeats} repeat(s) per stage from seed "
            f"{args.peer_seed}, epochs "
            + ", ".join(f"{s.model} {len(s.curve)}" for s in st)
            + f"; its test score is the `our` stage's at its best validation epoch (RUN.md §5). "
            f"Peak memory: the peer's process tree; ours: this benchmark process (world, model, "
            f"libraries). Peer log: `{peer['log'].relative_to(BENCH_ROOT)}` under the bench dir.",
            "",
        ]
    else:
        ref = BASELINE_REFERENCE
        lines += [
            f"Reference (official code, measured elsewhere on the same kind of machine; "
            f"`--peer` runs it here): {ref['seconds_per_epoch']:.0f} s/epoch, "
            f"{ref['minutes_per_run']:.0f} min per run, test joint ~{ref['test_joint']:.2f}.",
            "",
        ]
    if paper:
        for name, target in targets.items():
            hit = hits[name]
            other = peer["wall"] if name == "official" else baseline["wall"]
            who = "the official code" if name == "official" else "our `baseline` preset"
            if hit:
                lines.append(
                    f"- The paper model beat {who}'s best validation joint ({target:.3f}) after "
                    f"{hit[0]:.0f} s: **{other / hit[0]:.1f}x sooner than {who}'s whole run** "
                    f"({other / 60:.1f} min, measured in this run)."
                )
            else:
                lines.append(
                    f"- The paper model never beat {who}'s best validation joint ({target:.3f})."
                )
        if not peer:
            hit = hits.get("baseline")
            if hit:
                sooner_ref = ref["minutes_per_run"] * 60 / hit[0]
                lines.append(
                    f"- Against the official code's quoted 48 min per run: {sooner_ref:.0f}x "
                    f"(target >= 10x: {'PASS' if sooner_ref >= 10 else 'FAIL'})."
                )
        lines.append(
            f"- Its final best: val joint {paper['metrics']['joint']:.3f}, test joint "
            f"{paper['test']['joint']:.3f}"
            + (
                f" (official code: {peer['best_val_joint']:.3f} / {peer['test'][2]:.3f})"
                if peer
                else ""
            )
            + (
                f" (`baseline` preset: {baseline['metrics']['joint']:.3f} / "
                f"{baseline['test']['joint']:.3f})"
                if baseline
                else ""
            )
            + "."
        )
    lines.append("")
    if peer:
        for st in peer["stages"]:
            lines.append(
                f"Official {st.model} (cvNo {st.cv}) curve (minutes: val joint, every 5th epoch): "
                + ", ".join(f"{c[0] / 60:.1f}m:{c[4]:.3f}" for c in st.curve[::5])
            )
    for r in runs.values():
        step = 5 if r is baseline else 1
        lines.append(
            f"{'Baseline preset' if r is baseline else 'Paper'} curve (minutes: val joint"
            f"{', every 5th epoch' if step == 5 else ''}): "
            + ", ".join(f"{sec / 60:.1f}m:{j:.3f}" for sec, _, j in r["curve"][::step])
        )
    return "\n".join(lines) + "\n"
