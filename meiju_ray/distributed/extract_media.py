"""Audio, visual and ASR extraction from videos as Ray Data jobs (`meiju-ray extract`).

    [(id, video path)] --from_items--> map_batches(MediaWorker, actor pool)
        --> rows (id, ok, error kind, error, dim, values [T * D], frames T, text)
        --driver--> sink(MediaResult batch): the inner ring writes <id>.npy / transcripts

Each actor builds its extractor once (one model load; `num_gpus` per actor when configured, device
`cuda` then). A video that fails comes back as a row naming the file and the reason; the job goes
on. Only the driver writes files (through the sink), so the job also runs on a cluster without a
shared file system, as long as the workers can read the videos at the paths given.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from meiju_ray.config import RayConfig
from meiju_ray.features.extractors import MediaResult, check_model_available

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("ok", pa.bool_()),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("dim", pa.int32()),
        pa.field("values", pa.large_list(pa.float32())),
        pa.field("frames", pa.int32()),
        pa.field("text", pa.string()),
        # which actor process made the row, and how many extractors that process had built by
        # then: the driver's proof of one model load per actor (a restarted actor loads again)
        pa.field("worker", pa.string()),
        pa.field("loads", pa.int32()),
    ]
)
_LOADS_IN_THIS_PROCESS = 0


class MediaWorker:
    """Ray Data callable class: one extractor (model load) per actor; (id, path) rows in, one
    result row per video out."""

    def __init__(self, kind: str, cfg: dict, threads: int = 1):
        import torch

        from meiju_ray.features.extractors import build_extractor

        global _LOADS_IN_THIS_PROCESS
        torch.set_num_threads(max(1, threads))
        self.extractor = build_extractor(kind, cfg)
        _LOADS_IN_THIS_PROCESS += 1
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from meiju_ray.features.extractors import extract_one

        results = [
            extract_one(self.extractor, str(u), str(p)) for u, p in zip(batch["id"], batch["path"])
        ]
        return results_to_table(results, self.worker, _LOADS_IN_THIS_PROCESS)


def results_to_table(results: list[MediaResult], worker: str = "", loads: int = 0) -> pa.Table:
    arrays = [r.value if isinstance(r.value, np.ndarray) else None for r in results]
    frames = [0 if a is None else int(a.shape[0]) for a in arrays]
    flat = [np.zeros(0, np.float32) if a is None else a.reshape(-1) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([f.size for f in flat])]).astype(np.int64)
    values = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float32))
    )
    return pa.Table.from_pydict(
        {
            "id": [r.id for r in results],
            "ok": [r.value is not None for r in results],
            "error_kind": [r.error_kind for r in results],
            "error": [r.error for r in results],
            "dim": [
                int(r.dim or (a.shape[1] if a is not None else 0)) for r, a in zip(results, arrays)
            ],
            "values": values,
            "frames": frames,
            "text": [r.value if isinstance(r.value, str) else None for r in results],
            "worker": [worker] * len(results),
            "loads": [loads] * len(results),
        },
        schema=SCHEMA,
    )


def table_to_results(table: pa.Table) -> list[MediaResult]:
    col = table.column("values").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    offsets = col.offsets.to_numpy()
    out = []
    for i, row in enumerate(
        table.select(["id", "ok", "error_kind", "error", "dim", "frames", "text"]).to_pylist()
    ):
        value: np.ndarray | str | None = None
        if row["ok"]:
            if row["text"] is not None:
                value = row["text"]
            else:
                value = flat[offsets[i] : offsets[i + 1]].reshape(row["frames"], -1).copy()
        out.append(MediaResult(row["id"], value, int(row["dim"]), row["error_kind"], row["error"]))
    return out


def run_media_job(
    kind: str,
    cfg: dict,
    items: list[tuple[str, str]],
    sink: Callable[[list[MediaResult]], None],
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    gpus_per_actor: float = 0.0,
    batch_size: int = 4,
    ray_cfg: RayConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run one extractor over `items` on an actor pool; the driver hands each batch of results to
    `sink`. Returns timing statistics (videos, seconds, videos/s, actors)."""
    import ray.data

    from meiju_ray.distributed.cluster import check_cpu_budget, init_ray

    if not items:
        return {"videos": 0}
    cfg = dict(cfg)
    model = str(cfg.get("model", ""))
    if kind == "audio":
        from meiju_ray.features.audio import parse_audio_spec

        source, model = parse_audio_spec(model)
        model = "" if source == "opensmile" else model
    if model:  # a missing model fails here, in one line, not in every actor
        check_model_available(model, f"{kind} model")
    if gpus_per_actor > 0 and not str(cfg.get("device", "cpu")).startswith("cuda"):
        cfg["device"] = "cuda"
    if str(cfg.get("device", "cpu")).startswith("cuda") and gpus_per_actor <= 0:
        gpus_per_actor = 1.0  # Ray hides GPUs from actors that did not ask for one
    init_ray(ray_cfg or RayConfig())
    check_cpu_budget(actors * cpus_per_actor, f"{actors} actors x {cpus_per_actor:g} CPUs")
    t0 = time.time()
    ds = ray.data.from_items(
        [{"id": u, "path": p} for u, p in items],
        override_num_blocks=max(1, min(len(items), actors * 8)),
    )
    threads = max(1, int(cpus_per_actor)) if cpus_per_actor >= 1 else 1
    out = ds.map_batches(
        MediaWorker,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"kind": kind, "cfg": cfg, "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    seen, failed = 0, 0
    per_worker: Counter[str] = Counter()
    loads: dict[str, int] = {}
    for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        results = table_to_results(table)
        for worker, n in zip(table.column("worker").to_pylist(), table.column("loads").to_pylist()):
            per_worker[worker] += 1
            loads[worker] = max(loads.get(worker, 0), n)
        sink(results)
        seen += len(results)
        failed += sum(r.value is None for r in results)
        if progress:
            progress(
                f"{kind}: {seen}/{len(items)} videos ({failed} failed, {time.time() - t0:.1f}s)"
            )
    if seen != len(items):
        raise RuntimeError(f"{kind} extraction returned {seen} rows for {len(items)} videos")
    seconds = time.time() - t0
    return {
        "videos": seen,
        "seconds": round(seconds, 1),
        "videos_per_second": round(seen / max(seconds, 1e-9), 2),
        "videos_per_second_per_actor": round(seen / max(seconds, 1e-9) / actors, 2),
        "actors": actors,
        "gpus_per_actor": gpus_per_actor,
        # actor process -> videos it extracted / models it loaded (one each, unless restarted)
        "videos_per_worker": dict(per_worker),
        "model_loads": sum(loads.values()),
    }


def media_job(
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    gpus_per_actor: float = 0.0,
    ray_cfg: RayConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> Callable:
    """The `MediaJob` features.release.extract_release takes, bound to one pool sizing."""

    def run(kind: str, cfg: dict, items: list[tuple[str, str]], sink) -> dict:
        return run_media_job(
            kind,
            cfg,
            items,
            sink,
            actors,
            cpus_per_actor,
            gpus_per_actor,
            ray_cfg=ray_cfg,
            progress=progress,
        )

    return run
