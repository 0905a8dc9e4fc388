"""Pseudo-labelling the unlabelled pool with Ray Data: teacher inference over an actor pool.

    packed NoAnnotation shard paths --from_items--> map_batches(TeacherPredictor, actor pool: each
        actor
        reads its shard with pyarrow and runs the teacher) --> ids + probs
    probs --calibrate (temperature fit on Validation)--> selection rule --> pseudo_labels.parquet +
        summary.json

A pool below `pseudo.in_process_below` rows on a private local Ray (or with no Ray) is labelled by
the
same `TeacherPredictor` in this process instead: the actor pool's start-up costs more than its
parallelism saves on small pools. An attached cluster always uses Ray Data.

Actors load the teacher checkpoint once. Only ids and probabilities come back to the driver
(N x (C_e + C_i) floats), so memory stays bounded however large the pool; calibration, selection
and the output files are the inner ring's (`meiju_ray.pseudo.labelling`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from meiju_ray.config import ExperimentConfig
from meiju_ray.data.layout import UNLABELED
from meiju_ray.data.packing import corrupt_shards, pack_split
from meiju_ray.distributed.cluster import (
    RESERVED_CPUS,
    attached_to_cluster,
    check_cpu_budget,
    init_ray,
)
from meiju_ray.fileio import check_replaceable_dir
from meiju_ray.pseudo.labelling import (
    SUMMARY_FILE,
    TeacherPredictor,
    choose_engine,
    collect_predictions,
    pool_columns,
    pool_plan,
    select_and_write,
)
from meiju_ray.train import checkpoint

log = logging.getLogger("meiju_ray")
PROGRESS_EVERY_S = 10.0  # at most one "pseudo-labelling: k/N rows" line per this many seconds


def inference_engine(cfg: ExperimentConfig, n_rows: int) -> str:
    return choose_engine(n_rows, cfg.pseudo.in_process_below, attached_to_cluster(cfg.ray))


def auto_actors(
    resources: dict,
    cpus_per_actor: float,
    gpus_per_actor: float,
    n_shards: int,
    keep_free_cpus: float = RESERVED_CPUS,
) -> int:
    """pseudo.actors=0: as many actors as the cluster Ray reports can hold (GPUs first when actors
    use
    them; one CPU kept free for Ray Data's own tasks), never more than there are shards to share."""
    if gpus_per_actor > 0:
        fit = int(resources.get("GPU", 0.0) / gpus_per_actor + 1e-9)
    else:
        fit = int(max(0.0, resources.get("CPU", 0.0) - keep_free_cpus) / cpus_per_actor + 1e-9)
    return max(1, min(fit, n_shards))


def infer_pool(
    cfg: ExperimentConfig, teacher_dir: Path, packed_dir: Path, engine: str = "ray_data"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Run the teacher over every packed unlabelled row: ids (sorted) and emotion/intent
    probabilities.

    engine="ray_data": a Ray Data actor pool, whole shards per call (Ray must be initialised);
    engine="in_process": the same `TeacherPredictor` over the same work items in this process."""
    p = cfg.pseudo
    items = pool_plan(cfg, packed_dir)
    kwargs = {
        "checkpoint_dir": str(teacher_dir),
        "columns": pool_columns(cfg),
        "batch_size": p.batch_size,
    }
    if engine == "in_process":
        predictor = TeacherPredictor(
            device=cfg.train.device, threads=cfg.train.num_threads, **kwargs
        )
        return collect_predictions(
            (predictor({"path": [it["path"]], "rows": [it["rows"]]}) for it in items), packed_dir
        )
    if engine != "ray_data":
        raise ValueError(f"unknown inference engine {engine!r} (in_process | ray_data)")
    import ray.data

    actors = p.actors or auto_actors(
        ray.cluster_resources(), p.cpus_per_actor, p.gpus_per_actor, len(items)
    )
    check_cpu_budget(
        actors * p.cpus_per_actor,
        f"pseudo.actors={actors} x pseudo.cpus_per_actor={p.cpus_per_actor:g}",
    )
    # blocks of whole shards, so the actor pool shares the shards out (no ListFiles / read tasks);
    # several
    # shards per call when there are many (~8 calls per actor keep the load balanced, and fewer
    # calls
    # cut Ray Data's per-block overhead: -10 % wall time at 100 shards x 2 actors on 2 cores)
    per_call = max(1, len(items) // (8 * actors))
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_call))
    device = "cuda" if p.gpus_per_actor > 0 else "cpu"
    threads = max(1, int(p.cpus_per_actor)) if p.cpus_per_actor >= 1 else 1
    out = ds.map_batches(
        TeacherPredictor,
        batch_size=per_call,
        batch_format="numpy",
        fn_constructor_kwargs={**kwargs, "device": device, "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=actors),  # a fixed pool of `actors` actors
        num_cpus=p.cpus_per_actor,
        num_gpus=p.gpus_per_actor or None,
    )
    batches = out.iter_batches(batch_size=None, batch_format="numpy")
    total = sum(it["rows"] for it in items)
    return collect_predictions(rows_done(batches, total, "pseudo-labelling"), packed_dir)


def rows_done(batches, total: int, what: str, every_s: float = PROGRESS_EVERY_S):
    """The batches, passed through; a `<what>: k/N rows (t s)` line at most every `every_s`
    seconds and at the end (Ray Data's own progress is off in a quiet local run)."""
    t0 = last = time.time()
    done = 0
    for batch in batches:
        done += len(batch["id"])
        if time.time() - last >= every_s or done >= total:
            last = time.time()
            log.info("%s: %d/%d rows (%.0fs)", what, done, total, last - t0)
        yield batch


def run_pseudo_label(
    cfg: ExperimentConfig, teacher_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> dict:
    """Teacher -> probabilities on the pool -> calibrated selection; writes out_dir; returns the
    summary."""
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    check_replaceable_dir(out_dir, SUMMARY_FILE, "pseudo-label output")  # before any inference
    checkpoint.load_config_from(
        teacher_dir
    )  # fails fast with a clear message if it is not a checkpoint
    t0 = time.time()
    packed = pack_split(cfg.data, UNLABELED, lambda msg: log.info(msg))
    n_rows = sum(item["rows"] for item in pool_plan(cfg, packed))
    engine = inference_engine(cfg, n_rows)
    if engine == "in_process":
        log.info(
            "pseudo-labelling %d rows in this process (fewer than pseudo.in_process_below=%d "
            "on a local "
            "Ray: the actor pool's start-up would cost more than it saves; 0 = always Ray Data)",
            n_rows,
            cfg.pseudo.in_process_below,
        )
    else:
        init_ray(cfg.ray)
        log.info(
            "pseudo-labelling %d rows with Ray Data (%s actor(s))",
            n_rows,
            cfg.pseudo.actors or "auto",
        )
    try:
        ids, emo_probs, int_probs = infer_pool(cfg, teacher_dir, packed, engine)
    except Exception:
        damaged = corrupt_shards(packed)  # read in full only after a failure
        if not damaged:
            raise
        log.warning(
            "%d cached pool shard(s) cannot be read back (e.g. %s); packing the pool again",
            len(damaged),
            damaged[0],
        )
        packed = pack_split(cfg.data, UNLABELED, lambda msg: log.info(msg), force=True)
        ids, emo_probs, int_probs = infer_pool(cfg, teacher_dir, packed, engine)
    t_infer = time.time() - t0
    info = select_and_write(
        cfg,
        teacher_dir,
        ids,
        emo_probs,
        int_probs,
        out_dir,
        {
            "engine": engine,
            "inference_seconds": round(t_infer, 2),
            "rows_per_second": round(len(ids) / max(t_infer, 1e-9), 1),
            "packed_pool": str(packed),
        },
    )
    return info
