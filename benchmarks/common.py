"""Shared benchmark pieces: machine facts, worlds, configs, tables, BENCHMARKS.md sections.

Every benchmark is a plain `run(args) -> str` (markdown body) plus an argparse `add_args(parser)`;
`python -m benchmarks NAME` runs one, prints its table and replaces its section of
BENCHMARKS.md (between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`), leaving
every other section alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_ROOT = Path(os.environ.get("MEIJU_BENCH_DIR", REPO / "runs" / "bench"))
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# the order of the sections in BENCHMARKS.md
ORDER = [
    "time_to_quality",
    "time_to_quality_peer",
    "throughput",
    "data_path",
    "pseudo_label",
    "sweep",
    "end_to_end",
    "extract",
    "ssl",
]
# the official baseline's measured cost on this kind of machine (../shared docs)
BASELINE_REFERENCE = {"minutes_per_run": 48.0, "seconds_per_epoch": 24.0, "test_joint": 0.51}


def machine() -> dict[str, Any]:
    """Cores, RAM, GPU and versions, shown above every table (figures mean nothing without them)."""
    import mlflow
    import ray
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "?"
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit += " + local changes" if dirty else ""
    except OSError:
        commit = "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_gib, 1),
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['date']} · {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, GPU: {m['gpu']} · "
        f"python {m['python']}, torch {m['torch']}, ray {m['ray']}, mlflow {m['mlflow']} · "
        f"commit {m['commit']}"
    )


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(
    name: str, title: str, command: str, body: str, path: Path = BENCHMARKS_MD
) -> None:
    """Replace (or add, in ORDER) section `name` of BENCHMARKS.md; atomic (temp file + rename)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = (
        f"{start}\n## {title}\n\n```bash\n{command}\n```\n\n"
        f"{machine_line(machine())}\n\n{body.rstrip()}\n{end}"
    )
    doc = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:  # insert before the first later section, else append
        later = (
            [n for n in ORDER[ORDER.index(name) + 1 :] if f"<!-- bench:{n}:start -->" in doc]
            if name in ORDER
            else []
        )
        if later:
            marker = f"<!-- bench:{later[0]}:start -->"
            doc = doc.replace(marker, block + "\n\n" + marker, 1)
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(doc)
    os.replace(tmp, path)


def world(scale: float = 1.0, unlabeled: int = 200, seed: int = 0) -> Path:
    """A synthetic MEIJU world (Track 1 Mandarin dims, lengths) in runs/bench/worlds, made once."""
    from meiju_ray.data.synth import write_world

    out = BENCH_ROOT / "worlds" / f"s{scale:g}_u{unlabeled}_seed{seed}"
    if not (out / "world.json").is_file():
        t0 = time.time()
        print(
            f"[bench] writing synthetic world {out} (scale {scale:g}, {unlabeled} unlabelled)",
            flush=True,
        )
        write_world(out, seed=seed, scale=scale, unlabeled=unlabeled)
        print(f"[bench] world written in {time.time() - t0:.1f}s", flush=True)
    return out


def preset_overrides(preset: str) -> list[str]:
    """`paper`: experiments/track1_mandarin.yaml as is;
    `baseline`: experiments/baseline.yaml's model/loss/train."""
    if preset == "paper":
        return []
    if preset != "baseline":
        raise ValueError(f"unknown preset {preset!r} (paper | baseline)")
    import yaml

    tree = yaml.safe_load((REPO / "experiments" / "baseline.yaml").read_text())
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section in ("model", "loss", "train")
        for key, value in tree.get(section, {}).items()
    ]


def config(root: Path, out: Path, preset: str = "paper", *overrides: str):
    """Track 1 Mandarin experiment (A512/V342/L768) on a bench world; tracking off by default."""
    from meiju_ray.config import load_config

    return load_config(
        REPO / "experiments" / "track1_mandarin.yaml",
        [
            f"data.root={root}",
            f"output_dir={out}",
            "tracking.enabled=false",
            *preset_overrides(preset),
            *overrides,
        ],
    )


def _descendants(root: int) -> set[int]:
    """This process and every process below it (a local Ray cluster started by ray.init: gcs,
    raylet and all its workers and actors, which are children of the raylet)."""
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def pss_tree(exclude_self: bool = False) -> int:
    """Summed PSS (bytes) of this process and all its descendants (only the descendants with
    `exclude_self`: a subprocess being measured, not the benchmark driving it).

    PSS, not RSS: Ray's object store is shared memory mapped by every worker; RSS would count it
    once per process. (Ray workers rename themselves `ray::...`, so command lines cannot find them.)
    """
    total = 0
    me = os.getpid()
    for pid in _descendants(me) - ({me} if exclude_self else set()):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


class PeakMemory:
    """Context manager sampling pss_tree() every `interval` s in a thread; `.peak_gb` after exit.

    One sample reads every process's smaps_rollup (a page-table walk: ~50 ms for a 2 GB process);
    at 0.2 s that is a quarter of a core, which makes a 2-thread OpenMP job on 2 cores spin. Long
    runs sample every few seconds."""

    def __init__(self, exclude_self: bool = False, interval: float = 0.2) -> None:
        self.peak = 0
        self.exclude_self = exclude_self
        self.interval = interval
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, pss_tree(self.exclude_self))
            self._done.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return round(self.peak / 2**30, 2)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def env_setup() -> None:
    """Quiet, offline, reproducible defaults for every benchmark process."""
    from meiju_ray.distributed.cluster import apply_env_defaults

    apply_env_defaults()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.reconfigure(line_buffering=True)


def test_scores(checkpoint_dir: Path, root: Path) -> dict[str, float]:
    """Weighted F1 on the synthetic world's Testing split against its hidden labels."""
    from meiju_ray.train.inference import hidden_test_scores

    return hidden_test_scores(checkpoint_dir, str(root))
