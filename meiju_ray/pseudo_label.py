"""Pseudo-labelling the unlabelled pool with Ray Data: teacher inference over an actor pool.

    packed NoAnnotation shard paths --from_items--> map_batches(TeacherPredictor, actor pool: each actor
        reads its shard with pyarrow and runs the teacher) --> ids + probs
    probs --calibrate (temperature fit on Validation)--> selection rule --> pseudo_labels.parquet + summary.json

A pool below `pseudo.in_process_below` rows on a private local Ray (or with no Ray) is labelled by the
same `TeacherPredictor` in this process instead: the actor pool's ~5 s start-up would cost more than
its parallelism saves (BENCHMARKS.md §4). An attached cluster always uses Ray Data.

Actors load the teacher checkpoint once. Only ids and probabilities come back to the driver
(N x (C_e + C_i) floats), so memory stays bounded however large the pool; the selection (which
needs a global view for top-k) runs on the driver with the pure functions of `selection.py`.
The output directory appears complete or not at all (temp dir + rename; summary.json inside).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meiju_ray import checkpoint
from meiju_ray.batching import iter_batches
from meiju_ray.checkpoint import atomic_replace_dir
from meiju_ray.config import ExperimentConfig
from meiju_ray.engine import predict_probs, resolve_device, set_threads
from meiju_ray.fileio import write_json_atomic
from meiju_ray.layout import UNLABELED, DataError, read_split_list, resolve
from meiju_ray.packing import PackedSplit, load_split, pack_split, shard_files, table_to_packed
from meiju_ray.ray_env import RESERVED_CPUS, attached_to_cluster, check_cpu_budget, init_ray
from meiju_ray.selection import allowed_pairs_from, apply_temperature, fit_temperature, select, summary

log = logging.getLogger("meiju_ray")
PSEUDO_FILE, SUMMARY_FILE = "pseudo_labels.parquet", "summary.json"
class TeacherPredictor:
    """Ray Data callable class: one model load per actor; shard paths in, probabilities out.

    The actor reads its shard itself (pyarrow, `batch_size` rows at a time) instead of receiving
    the features as Ray Data blocks: a Track 1 row is ~280 KB of frames, so shipping blocks through
    the object store (and Ray Data's serial read tasks) cost more than the inference. Only ids and
    probabilities travel. The shards must be readable from every node (shared disk or the cache_dir
    on a shared mount), as for any Parquet input of a Ray cluster.
    """

    def __init__(self, checkpoint_dir: str, columns: list[str], device: str = "cpu", threads: int = 1,
                 batch_size: int = 256):
        set_threads(threads)
        self.device = resolve_device(device)
        self.model, self.cfg, _ = checkpoint.load(checkpoint_dir, self.device)
        self.columns, self.batch_size = columns, batch_size

    def predict_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        split = table_to_packed(table, self.cfg.data.modalities)
        probs = predict_probs(self.model, iter_batches(split, 64), self.device)  # length-bucketed, row order kept
        return {"id": np.asarray(split.ids, dtype=object),
                "emotion_probs": probs["emotion"].astype(np.float32),
                "intent_probs": probs["intent"].astype(np.float32)}

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for path, limit in zip(items["path"], items["rows"]):
            left = int(limit)
            shard = pq.ParquetFile(str(path), memory_map=True)  # mapped: ~1.5x faster reads than buffered
            for batch in shard.iter_batches(batch_size=self.batch_size, columns=self.columns):
                if left <= 0:
                    break
                table = pa.Table.from_batches([batch]).slice(0, left)
                left -= table.num_rows
                parts.append(self.predict_table(table))
        if not parts:
            return {"id": np.array([], dtype=object), "emotion_probs": np.zeros((0, 0), np.float32),
                    "intent_probs": np.zeros((0, 0), np.float32)}
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def shard_plan(files: list[Path], max_rows: int = 0) -> list[dict]:
    """One work item per shard: {"path", "rows"}, rows = the shard's row count (its Parquet footer),
    capped so the total is at most max_rows (0 = all)."""
    items, budget = [], max_rows or float("inf")
    for f in files:
        if budget <= 0:
            break
        n = pq.ParquetFile(f).metadata.num_rows
        items.append({"path": str(f), "rows": int(min(n, budget))})
        budget -= n
    return items


def pool_columns(cfg: ExperimentConfig) -> list[str]:
    return ["id"] + [c for m in cfg.data.modalities for c in (m.name, f"{m.name}_len")]


def pool_plan(cfg: ExperimentConfig, packed_dir: Path) -> list[dict]:
    """The pool's work items (`shard_plan` under pseudo.max_rows); an empty pool is an error."""
    items = shard_plan(shard_files(packed_dir), cfg.pseudo.max_rows)
    if not items:
        raise DataError(f"the unlabelled pool at {packed_dir} has no shards")
    return items


def choose_engine(n_rows: int, in_process_below: int, attached: bool) -> str:
    """'in_process' for a pool below `in_process_below` rows when Ray would be a private local cluster,
    else 'ray_data'. The actor pool's fixed start-up (a worker process importing Ray Data and torch,
    then loading the teacher: ~5 s on 2 cores, BENCHMARKS.md §4) outweighs its parallelism on small pools."""
    return "in_process" if 0 < in_process_below and n_rows < in_process_below and not attached else "ray_data"


def inference_engine(cfg: ExperimentConfig, n_rows: int) -> str:
    return choose_engine(n_rows, cfg.pseudo.in_process_below, attached_to_cluster(cfg.ray))


def auto_actors(resources: dict, cpus_per_actor: float, gpus_per_actor: float, n_shards: int,
                keep_free_cpus: float = RESERVED_CPUS) -> int:
    """pseudo.actors=0: as many actors as the cluster Ray reports can hold (GPUs first when actors use
    them; one CPU kept free for Ray Data's own tasks), never more than there are shards to share."""
    if gpus_per_actor > 0:
        fit = int(resources.get("GPU", 0.0) / gpus_per_actor + 1e-9)
    else:
        fit = int(max(0.0, resources.get("CPU", 0.0) - keep_free_cpus) / cpus_per_actor + 1e-9)
    return max(1, min(fit, n_shards))


def _collect(batches, packed_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids: list[str] = []
    emo, intent = [], []
    for batch in batches:
        if len(batch["id"]) == 0:
            continue
        ids.extend(str(x) for x in batch["id"])
        emo.append(np.asarray(batch["emotion_probs"], dtype=np.float32))
        intent.append(np.asarray(batch["intent_probs"], dtype=np.float32))
    if not ids:
        raise DataError(f"the unlabelled pool at {packed_dir} produced no rows")
    order = np.argsort(np.asarray(ids), kind="stable")  # Ray Data may reorder blocks; sort by id
    ids = [ids[i] for i in order]
    return ids, np.concatenate(emo)[order], np.concatenate(intent)[order]


def infer_pool(cfg: ExperimentConfig, teacher_dir: Path, packed_dir: Path,
               engine: str = "ray_data") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Run the teacher over every packed unlabelled row: ids (sorted) and emotion/intent probabilities.

    engine="ray_data": a Ray Data actor pool, whole shards per call (Ray must be initialised);
    engine="in_process": the same `TeacherPredictor` over the same work items in this process."""
    p = cfg.pseudo
    items = pool_plan(cfg, packed_dir)
    kwargs = {"checkpoint_dir": str(teacher_dir), "columns": pool_columns(cfg), "batch_size": p.batch_size}
    if engine == "in_process":
        predictor = TeacherPredictor(device=cfg.train.device, threads=cfg.train.num_threads, **kwargs)
        return _collect((predictor({"path": [it["path"]], "rows": [it["rows"]]}) for it in items), packed_dir)
    if engine != "ray_data":
        raise ValueError(f"unknown inference engine {engine!r} (in_process | ray_data)")
    import ray.data

    actors = p.actors or auto_actors(ray.cluster_resources(), p.cpus_per_actor, p.gpus_per_actor, len(items))
    check_cpu_budget(actors * p.cpus_per_actor, f"pseudo.actors={actors} x pseudo.cpus_per_actor={p.cpus_per_actor:g}")
    # blocks of whole shards, so the actor pool shares the shards out (no ListFiles / read tasks); several
    # shards per call when there are many (~8 calls per actor keep the load balanced, and fewer calls
    # cut Ray Data's per-block overhead: -10 % wall time at 100 shards x 2 actors on 2 cores)
    per_call = max(1, len(items) // (8 * actors))
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_call))
    device = "cuda" if p.gpus_per_actor > 0 else "cpu"
    threads = max(1, int(p.cpus_per_actor)) if p.cpus_per_actor >= 1 else 1
    out = ds.map_batches(TeacherPredictor, batch_size=per_call, batch_format="numpy",
                         fn_constructor_kwargs={**kwargs, "device": device, "threads": threads},
                         compute=ray.data.ActorPoolStrategy(size=actors),
                         num_cpus=p.cpus_per_actor, num_gpus=p.gpus_per_actor or None)
    return _collect(out.iter_batches(batch_size=None, batch_format="numpy"), packed_dir)


def calibration_temperatures(cfg: ExperimentConfig, teacher_dir: Path) -> dict[str, float]:
    """Fit one temperature per task on the validation split (the teacher's own probabilities)."""
    if cfg.pseudo.calibrate == "none":
        return {"emotion": 1.0, "intent": 1.0}
    model, _, _ = checkpoint.load(teacher_dir, "cpu")
    val = load_split(cfg.data, cfg.data.val_split)
    probs = predict_probs(model, iter_batches(val, 64), resolve_device("cpu"))
    return {task: fit_temperature(np.log(np.clip(probs[task], 1e-12, 1.0)), probs[f"{task}_true"])
            for task in ("emotion", "intent")}


def hidden_truth(cfg: ExperimentConfig, ids: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """True labels of the pool where the data ships them (synthetic worlds, corpus importers)."""
    path = resolve(cfg.data.root, cfg.data.unlabeled_truth) if cfg.data.unlabeled_truth else None
    if path is None or not path.is_file():
        return None, None
    truth = read_split_list(path, cfg.data.emotion_labels, cfg.data.intent_labels, "truth")
    where = {u: i for i, u in enumerate(truth.ids)}
    rows = np.array([where.get(u, -1) for u in ids])
    emo = np.where(rows >= 0, truth.emotion[np.maximum(rows, 0)], -1)
    intent = np.where(rows >= 0, truth.intent[np.maximum(rows, 0)], -1)
    return emo, intent


def run_pseudo_label(cfg: ExperimentConfig, teacher_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Teacher -> probabilities on the pool -> calibrated selection; writes out_dir; returns the summary."""
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    checkpoint.load_config_from(teacher_dir)  # fails fast with a clear message if it is not a checkpoint
    t0 = time.time()
    packed = pack_split(cfg.data, UNLABELED, lambda msg: log.info(msg))
    n_rows = sum(item["rows"] for item in pool_plan(cfg, packed))
    engine = inference_engine(cfg, n_rows)
    if engine == "in_process":
        log.info("pseudo-labelling %d rows in this process (fewer than pseudo.in_process_below=%d on a local "
                 "Ray: the actor pool's start-up would cost more than it saves; 0 = always Ray Data)",
                 n_rows, cfg.pseudo.in_process_below)
    else:
        init_ray(cfg.ray)
        log.info("pseudo-labelling %d rows with Ray Data (%s actor(s))", n_rows, cfg.pseudo.actors or "auto")
    ids, emo_probs, int_probs = infer_pool(cfg, teacher_dir, packed, engine)
    t_infer = time.time() - t0
    temps = calibration_temperatures(cfg, teacher_dir)
    emo_cal, int_cal = apply_temperature(emo_probs, temps["emotion"]), apply_temperature(int_probs, temps["intent"])
    train_labels = read_split_list(resolve(cfg.data.root, cfg.data.annotation_dir) / f"{cfg.data.train_split}_files.txt",
                                   cfg.data.emotion_labels, cfg.data.intent_labels)
    allowed = allowed_pairs_from(train_labels.emotion, train_labels.intent,
                                 len(cfg.data.emotion_labels), len(cfg.data.intent_labels))
    sel = select(emo_cal, int_cal, cfg.pseudo, cfg.data.emotion_labels, cfg.data.intent_labels, allowed)
    true_emo, true_int = hidden_truth(cfg, ids)
    info = summary(sel, cfg.data.emotion_labels, cfg.data.intent_labels, true_emo, true_int)
    info.update({"temperature": temps, "rule": cfg.pseudo.rule, "threshold": cfg.pseudo.threshold,
                 "engine": engine, "inference_seconds": round(t_infer, 2),
                 "rows_per_second": round(len(ids) / max(t_infer, 1e-9), 1),
                 "packed_pool": str(packed), "teacher": str(teacher_dir)})
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "emotion_probs": pa.FixedSizeListArray.from_arrays(pa.array(emo_cal.reshape(-1)), emo_cal.shape[1]),
        "intent_probs": pa.FixedSizeListArray.from_arrays(pa.array(int_cal.reshape(-1)), int_cal.shape[1]),
        "emotion_conf": sel.emo_conf, "intent_conf": sel.int_conf,
        "emotion_pred": sel.emo_pred, "intent_pred": sel.int_pred,
        "emotion": sel.emotion, "intent": sel.intent,
        "selected": sel.selected, "weight": sel.weight,
    })
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        pq.write_table(table, tmp / PSEUDO_FILE)
        write_json_atomic(tmp / SUMMARY_FILE, info)
        atomic_replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("pseudo-labels: %d of %d rows selected (emotion %d, intent %d) in %.1fs", info["n_selected"],
             info["n_rows"], info["n_emotion_kept"], info["n_intent_kept"], t_infer)
    return info


def load_pseudo_rows(cfg: ExperimentConfig, pseudo_dir: str | os.PathLike) -> PackedSplit:
    """Selected rows with their features (read from the packed pool by id) and pseudo labels."""
    pseudo_dir = Path(pseudo_dir)
    if not (pseudo_dir / SUMMARY_FILE).is_file():
        raise DataError(f"{pseudo_dir}: not a complete pseudo-label output (no {SUMMARY_FILE})")
    labels = pq.read_table(pseudo_dir / PSEUDO_FILE, columns=["id", "emotion", "intent", "selected", "weight"])
    labels = labels.filter(pc.field("selected"))
    packed = pack_split(cfg.data, UNLABELED)
    columns = ["id", "emotion", "intent"] + [c for m in cfg.data.modalities for c in (m.name, f"{m.name}_len")]
    wanted = pa.array(labels.column("id").to_pylist(), pa.string())
    parts = [pq.read_table(f, columns=columns, filters=pc.field("id").isin(wanted), memory_map=True)
             for f in shard_files(packed)]
    feats = pa.concat_tables(parts) if parts else None
    if feats is None or feats.num_rows == 0:
        return table_to_packed(pq.read_table(shard_files(packed)[0], columns=columns).slice(0, 0), cfg.data.modalities)
    split = table_to_packed(feats, cfg.data.modalities)
    row = {u: i for i, u in enumerate(labels.column("id").to_pylist())}
    idx = np.array([row[u] for u in split.ids])
    split.emotion = labels.column("emotion").to_numpy()[idx].astype(np.int64)
    split.intent = labels.column("intent").to_numpy()[idx].astype(np.int64)
    split.weight = labels.column("weight").to_numpy()[idx].astype(np.float32)
    return split
