"""The official MEIJU'25 baseline as a benchmark peer: run it, never copy it.

The official code lives outside this project (default: ../shared/peers/MEIJU2025-baseline, a copy
of AI-S2-Lab/MEIJU2025-baseline with the minimal CPU patches its PATCHES.md lists; RUN.md is how
to run it). This module only drives it as a subprocess on one of our synthetic worlds and reads
what it prints: its Track 1 Mandarin recipe is stage 1 `--model=pretrain` (20 constant + 40
decaying epochs), then stage 2 `--model=our` initialised from stage 1 (15 + 45 epochs), each
picking its best epoch by validation joint and scoring the Testing split at that epoch.

Every line the peer prints is time-stamped as it arrives (the peer's own "Time Taken" is whole
seconds), and its process tree's PSS is sampled for the peak memory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import REPO, PeakMemory

DEFAULT_PEER_DIR = REPO.parent / "shared" / "peers" / "MEIJU2025-baseline"
# what the peer imports (RUN.md §1); h5py is imported and never used, but the import is there
PEER_MODULES = ("torch", "numpy", "sklearn", "h5py", "PIL")
# the shipped scripts' schedules: (constant-LR epochs, linearly decaying epochs)
SHIPPED_SCHEDULE = {"pretrain": (20, 40), "our": (15, 45)}

_VAL = re.compile(
    r"Val result of epoch (\d+) / (\d+) emo_metric ([\d.]+) int_metric ([\d.]+) "
    r"joint_metric ([\d.]+)"
)
_TEST = re.compile(r"Tst result emo_metric ([\d.]+) int_metric ([\d.]+) joint_metric ([\d.]+)")
_BEST = re.compile(r"Best eval epoch (-?\d+)")
# The peer seeds nothing itself (its --random_seed only reaches DataLoader workers), so every run
# of it is a different draw. This launcher seeds Python, NumPy and torch, then runs the unchanged
# train_baseline.py as __main__ with the peer's directory first on sys.path, as `python script`
# would. argv: seed, script, the script's own arguments.
SEEDED_LAUNCHER = (
    "import os, random, runpy, sys; import numpy, torch; "
    "seed = int(sys.argv[1]); random.seed(seed); numpy.random.seed(seed); torch.manual_seed(seed); "
    "script = sys.argv[2]; sys.argv = sys.argv[2:]; "
    "sys.path.insert(0, os.path.dirname(os.path.abspath(script))); "
    "runpy.run_path(script, run_name='__main__')"
)


class PeerError(RuntimeError):
    """The peer could not be run or did not produce its result; the message says why."""


@dataclass
class StageRun:
    """One `train_baseline.py` process: its validation curve and the test score at its best."""

    model: str
    cv: int
    # (seconds since this stage's process started, epoch, val emo, val int, val joint)
    curve: list[tuple[float, int, float, float, float]] = field(default_factory=list)
    best_epoch: int | None = None
    test: tuple[float, float, float] | None = None
    wall: float = 0.0

    def feed(self, seconds: float, line: str) -> None:
        """Read one line of the peer's output."""
        if m := _VAL.search(line):
            e, _, emo, intent, joint = m.groups()
            self.curve.append((seconds, int(e), float(emo), float(intent), float(joint)))
        elif m := _TEST.search(line):
            self.test = tuple(float(v) for v in m.groups())  # type: ignore[assignment]
        elif m := _BEST.search(line):
            self.best_epoch = int(m.group(1))

    @property
    def best(self) -> tuple[float, int, float, float, float]:
        """The curve point with the best validation joint."""
        return max(self.curve, key=lambda c: c[4])

    @property
    def best_val_joint(self) -> float:
        return self.best[4]

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds between consecutive validation lines (the first includes start-up)."""
        ends = [c[0] for c in self.curve]
        return [b - a for a, b in zip([0.0, *ends[:-1]], ends)]


def peer_python(requested: str | None) -> str:
    """The interpreter to run the peer with: `requested`, else this one if it has what the peer
    imports. Exits with the RUN.md command to make one otherwise (the project's test extras
    include h5py, so a test install can run the peer)."""
    python = requested or sys.executable
    probe = subprocess.run(
        [python, "-c", "; ".join(f"import {m}" for m in PEER_MODULES)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(
            f"error: {python} cannot run the official baseline ({last}). Make a peer environment "
            "(RUN.md §1): python3 -m venv PEER_VENV && PEER_VENV/bin/pip install torch==2.13.0 "
            "numpy scikit-learn h5py pillow, then pass --peer-python PEER_VENV/bin/python"
        )
    return python


def labelled_root(root: Path, dest: Path) -> Path:
    """An official-layout copy of `root` whose Testing list carries the withheld labels (the peer's
    `--has_test` needs them, RUN.md §2). Features are symlinked; `root` is left untouched."""
    labels = {}
    for line in (root / "hidden" / "Testing_labels.txt").read_text().splitlines():
        if line.strip():
            uid, emo, intent = line.split()
            labels[uid] = f"{emo} {intent}"
    ann = dest / "Annotation"
    ann.mkdir(parents=True, exist_ok=True)
    for name in ("Training_files.txt", "Validation_files.txt"):
        (ann / name).write_text((root / "Annotation" / name).read_text())
    rows = []
    for line in (root / "Annotation" / "Testing_files.txt").read_text().splitlines():
        if line.strip():
            name = line.split()[0]
            uid = name.rsplit(".", 1)[0]
            if uid not in labels:
                raise PeerError(f"{root}/hidden/Testing_labels.txt: no label for {uid}")
            rows.append(f"{name} {labels[uid]}")
    (ann / "Testing_files.txt").write_text("\n".join(rows) + "\n")
    link = ann / "features"
    if not link.exists():
        link.symlink_to((root / "Annotation" / "features").resolve())
    return dest


def schedule(model: str, epochs: int | None) -> tuple[int, int]:
    """(niter, niter_decay): the shipped one, or `epochs` split in the shipped proportion."""
    niter, decay = SHIPPED_SCHEDULE[model]
    if epochs is None or epochs == niter + decay:
        return niter, decay
    constant = max(1, round(epochs * niter / (niter + decay)))
    return constant, max(1, epochs - constant)


def stage_command(
    python: str,
    peer_dir: Path,
    model: str,
    cv: int,
    run_idx: int,
    epochs: int | None,
    best_cv: int,
    seed: int,
) -> list[str]:
    """The shipped scripts/Track1/Mandarin_{pretrain,our}_balance.sh line, CPU settings from RUN.md
    §3 (gpu -1, DataLoader workers 0, intra-op threads from OMP_NUM_THREADS), seeded by
    SEEDED_LAUNCHER."""
    niter, decay = schedule(model, epochs)
    cmd = [
        python,
        "-c",
        SEEDED_LAUNCHER,
        str(seed),
        str(peer_dir / "train_baseline.py"),
        "--dataset_mode=multimodal",
        f"--model={model}",
        "--log_dir=./logs",
        "--checkpoints_dir=./checkpoints",
        "--gpu_ids=-1",
        "--input_dim_a=512",
        "--embd_size_a=128",
        "--embd_method_a=maxpool",
        "--input_dim_v=342",
        "--embd_size_v=128",
        "--embd_method_v=maxpool",
        "--input_dim_l=768",
        "--embd_size_l=128",
        "--hidden_size=128",
        "--A_type=wav2vec",
        "--V_type=ResNet-50",
        "--L_type=RoBERTa",
        "--num_threads=0",
        "--corpus=MEIJU_balance_Mandarin",
        "--emo_output_dim=7",
        "--int_output_dim=8",
        "--track=1",
        "--ce_weight=1.0",
        *(["--focal_weight=1.0"] if model == "our" else []),
        "--cls_layers=128,64",
        "--dropout_rate=0.2",
        f"--niter={niter}",
        f"--niter_decay={decay}",
        "--print_freq=10",
        "--batch_size=32",
        "--lr=2e-4",
        f"--run_idx={run_idx}",
        "--weight_decay=1e-5",
        f"--name={model}_balance_Mandarin",
        "--suffix=run_{gpu_ids}_{run_idx}",
        "--has_test",
        f"--cvNo={cv}",
    ]
    if model == "our":
        cmd += [
            f"--pretrained_path=./checkpoints/pretrain_balance_Mandarin_run_-1_{run_idx}",
            f"--best_cvNo={best_cv}",
        ]
    return cmd


def run_stage(cmd: list[str], cwd: Path, env: dict[str, str], run: StageRun, log: Path) -> None:
    """Run one peer process, time-stamping its lines into `run` and copying them to `log`."""
    t0 = time.perf_counter()
    with log.open("a", buffering=1) as sink:  # line-buffered: the log can be followed live
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            run.feed(time.perf_counter() - t0, line)
            if "Val result of epoch" in line:
                print(f"[peer] {run.model} cv{run.cv}: {line.split(' - ')[-1].strip()}", flush=True)
        rc = proc.wait()
    run.wall = time.perf_counter() - t0
    if run.best_epoch == -1:
        # the peer keeps best_eval_epoch = -1 unless some epoch's val joint beats 0, then fails to
        # load the checkpoint "-1_net_*.pth" for its test pass
        raise PeerError(
            f"the peer's {run.model} stage (cvNo {run.cv}) scored val joint 0 in every epoch, so "
            "it has no best epoch to test (the official code then looks for -1_net_*.pth); give "
            f"it more epochs, a larger world or another --peer-seed. Log: {log}"
        )
    if rc != 0 or run.test is None or not run.curve:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise PeerError(
            f"the peer's {run.model} stage (cvNo {run.cv}) exited {rc}; log {log}:\n{tail}"
        )


def next_run_idx(run_dir: Path) -> int:
    """A fresh `--run_idx` for `run_dir`: the peer corrupts result.tsv when re-run into an
    existing name (RUN.md §5)."""
    done = [int(p.name.rsplit("_", 1)[1]) for p in (run_dir / "logs").glob("*_run_-1_*")]
    return 1 + max(done, default=0)


def run_official(
    root: Path,
    work: Path,
    python: str,
    threads: int,
    repeats: int = 1,
    epochs: int | None = None,
    peer_dir: Path = DEFAULT_PEER_DIR,
    seed: int = 0,
) -> dict:
    """The official Track 1 Mandarin recipe on `root`: `repeats` pretrain runs, then `repeats` our
    runs from pretrain repeat 1 (the shipped scripts run 3 and 3 from repeat 2; one repeat each is
    one "run" of the official code). `epochs` per stage: the shipped 60 when None. Repeat k of
    either stage is seeded with `seed + k - 1`, so a run is repeatable."""
    if not (peer_dir / "train_baseline.py").is_file():
        raise PeerError(
            f"{peer_dir}: no train_baseline.py (the official baseline with its CPU patches; "
            "pass --peer-dir)"
        )
    lab = labelled_root(root, work / "labelled_root")
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_idx = next_run_idx(run_dir)
    env = {
        **os.environ,
        "MEIJU_TARGET_ROOT": str(lab / "Annotation"),
        "MEIJU_FEATURE_ROOT": str(lab / "Annotation" / "features"),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    stages: list[StageRun] = []
    log = work / f"peer_run{run_idx}.log"
    t0 = time.perf_counter()
    with PeakMemory(exclude_self=True, interval=2.0) as mem:  # a 50-minute job
        for model in ("pretrain", "our"):
            for cv in range(1, repeats + 1):
                run = StageRun(model, cv)
                cmd = stage_command(
                    python, peer_dir, model, cv, run_idx, epochs, best_cv=1, seed=seed + cv - 1
                )
                run_stage(cmd, run_dir, env, run, log)
                stages.append(run)
    wall = time.perf_counter() - t0
    our = [s for s in stages if s.model == "our"]
    return {
        "stages": stages,
        "wall": wall,
        "peak_gb": mem.peak_gb,
        "log": log,
        # the official result: the `our` stage, mean over its repeats, as result.tsv reports it
        "best_val_joint": sum(s.best_val_joint for s in our) / len(our),
        "test": tuple(sum(s.test[i] for s in our) / len(our) for i in range(3)),  # type: ignore[index]
    }
