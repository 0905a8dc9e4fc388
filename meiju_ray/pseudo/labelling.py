"""Teacher inference on one shard of the unlabelled pool, calibration, selection and pseudo-label
files.

Everything here runs in one process. `meiju_ray.distributed.pseudo_label` fans `TeacherPredictor`
out over a Ray Data actor pool for large pools (or calls it in-process for small ones); the
selection itself needs a global view (top-k, quantiles), so it runs on the driver.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meiju_ray.config import ExperimentConfig, PseudoLabelConfig
from meiju_ray.data.batching import iter_batches
from meiju_ray.data.layout import UNLABELED, DataError, read_split_list, resolve
from meiju_ray.data.packing import (
    PackedSplit,
    load_split,
    pack_split,
    packed_columns,
    shard_files,
    table_to_packed,
)
from meiju_ray.fileio import atomic_dir, write_json_atomic
from meiju_ray.labels import MISSING_ID
from meiju_ray.pseudo.selection import (
    Selection,
    allowed_pairs_from,
    apply_temperature,
    class_prior,
    fit_temperature,
    select,
    summary,
)
from meiju_ray.train import checkpoint
from meiju_ray.train.engine import predict_probs, resolve_device, set_threads

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

    def __init__(
        self,
        checkpoint_dir: str,
        columns: list[str],
        device: str = "cpu",
        threads: int = 1,
        batch_size: int = 256,
    ):
        set_threads(threads)
        self.device = resolve_device(device)
        self.model, self.cfg, _ = checkpoint.load(checkpoint_dir, self.device)
        self.columns, self.batch_size = columns, batch_size

    def predict_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        split = table_to_packed(table, self.cfg.data.modalities)
        probs = predict_probs(
            self.model, iter_batches(split, 64), self.device
        )  # length-bucketed, row order kept
        return {
            "id": np.asarray(split.ids, dtype=object),
            "emotion_probs": probs["emotion"].astype(np.float32),
            "intent_probs": probs["intent"].astype(np.float32),
        }

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for path, limit in zip(items["path"], items["rows"]):
            left = int(limit)
            shard = pq.ParquetFile(  # mapped: ~1.5x faster reads than buffered
                str(path), memory_map=True, page_checksum_verification=True
            )
            for batch in shard.iter_batches(batch_size=self.batch_size, columns=self.columns):
                if left <= 0:
                    break
                table = pa.Table.from_batches([batch]).slice(0, left)
                left -= table.num_rows
                parts.append(self.predict_table(table))
        if not parts:
            return {
                "id": np.array([], dtype=object),
                "emotion_probs": np.zeros((0, 0), np.float32),
                "intent_probs": np.zeros((0, 0), np.float32),
            }
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
    return packed_columns(cfg.data.modalities, labels=False)


def pool_plan(cfg: ExperimentConfig, packed_dir: Path) -> list[dict]:
    """The pool's work items (`shard_plan` under pseudo.max_rows); an empty pool is an error."""
    items = shard_plan(shard_files(packed_dir), cfg.pseudo.max_rows)
    if not items:
        raise DataError(f"the unlabelled pool at {packed_dir} has no shards")
    return items


def choose_engine(n_rows: int, in_process_below: int, attached: bool) -> str:
    """'in_process' for a pool below `in_process_below` rows when Ray would be a private local
    cluster,
    else 'ray_data'. The actor pool's fixed start-up (a worker process importing Ray Data and torch,
    then loading the teacher; see BENCHMARKS.md) outweighs its parallelism on small
        pools."""
    return (
        "in_process"
        if 0 < in_process_below and n_rows < in_process_below and not attached
        else "ray_data"
    )


def collect_predictions(batches, packed_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
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


def calibration_temperatures(cfg: ExperimentConfig, teacher_dir: Path) -> dict[str, float]:
    """Fit one temperature per task on the validation split (the teacher's own probabilities)."""
    if cfg.pseudo.calibrate == "none":
        return {"emotion": 1.0, "intent": 1.0}
    model, _, _ = checkpoint.load(teacher_dir, "cpu")
    val = load_split(cfg.data, cfg.data.val_split)
    probs = predict_probs(model, iter_batches(val, 64), resolve_device("cpu"))
    return {
        task: fit_temperature(np.log(np.clip(probs[task], 1e-12, 1.0)), probs[f"{task}_true"])
        for task in ("emotion", "intent")
    }


def hidden_truth(
    cfg: ExperimentConfig, ids: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None]:
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


def select_and_write(
    cfg: ExperimentConfig,
    teacher_dir: Path,
    ids: list[str],
    emo_probs: np.ndarray,
    int_probs: np.ndarray,
    out_dir: Path,
    extra: dict | None = None,
) -> dict:
    """Calibrate the teacher's pool probabilities, apply the selection rule, write
    pseudo_labels.parquet + summary.json into out_dir (complete or not at all); return the
        summary."""
    temps = calibration_temperatures(cfg, teacher_dir)
    emo_cal = apply_temperature(emo_probs, temps["emotion"])
    int_cal = apply_temperature(int_probs, temps["intent"])
    d = cfg.data
    train_labels = read_split_list(
        resolve(d.root, d.annotation_dir) / f"{d.train_split}_files.txt",
        d.emotion_labels,
        d.intent_labels,
    )
    allowed = allowed_pairs_from(
        train_labels.emotion, train_labels.intent, len(d.emotion_labels), len(d.intent_labels)
    )
    priors = {
        "emotion": class_prior(train_labels.emotion, len(d.emotion_labels)),
        "intent": class_prior(train_labels.intent, len(d.intent_labels)),
    }
    sel = select(emo_cal, int_cal, cfg.pseudo, d.emotion_labels, d.intent_labels, allowed, priors)
    true_emo, true_int = hidden_truth(cfg, ids)
    info = summary(sel, d.emotion_labels, d.intent_labels, true_emo, true_int)
    info.update(
        {
            "temperature": temps,
            "rule": cfg.pseudo.rule,
            "threshold": cfg.pseudo.threshold,
            **(extra or {}),
            "teacher": str(teacher_dir),
        }
    )

    def fixed_lists(probs: np.ndarray) -> pa.FixedSizeListArray:  # [N, C] -> N lists of C floats
        return pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])

    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "emotion_probs": fixed_lists(emo_cal),
            "intent_probs": fixed_lists(int_cal),
            "emotion_conf": sel.emo_conf,
            "intent_conf": sel.int_conf,
            "emotion_pred": sel.emo_pred,
            "intent_pred": sel.int_pred,
            "emotion": sel.emotion,
            "intent": sel.intent,
            "selected": sel.selected,
            "weight": sel.weight,
        }
    )
    with atomic_dir(out_dir) as tmp:
        pq.write_table(table, tmp / PSEUDO_FILE)
        write_json_atomic(tmp / SUMMARY_FILE, info)
    log.info(
        "pseudo-labels: %d of %d rows selected (emotion %d, intent %d)",
        info["n_selected"],
        info["n_rows"],
        info["n_emotion_kept"],
        info["n_intent_kept"],
    )
    return info


def load_pseudo_rows(cfg: ExperimentConfig, pseudo_dir: str | os.PathLike) -> PackedSplit:
    """Selected rows with their features (read from the packed pool by id) and pseudo targets."""
    pseudo_dir = Path(pseudo_dir)
    if not (pseudo_dir / SUMMARY_FILE).is_file():
        raise DataError(f"{pseudo_dir}: not a complete pseudo-label output (no {SUMMARY_FILE})")
    labels = pq.read_table(
        pseudo_dir / PSEUDO_FILE,
        columns=["id", "emotion", "intent", "selected", "weight", "emotion_probs", "intent_probs"],
    )
    labels = labels.filter(pc.field("selected"))
    packed = pack_split(cfg.data, UNLABELED)
    columns = packed_columns(cfg.data.modalities)
    wanted = pa.array(labels.column("id").to_pylist(), pa.string())
    parts = [
        pq.read_table(f, columns=columns, filters=pc.field("id").isin(wanted), memory_map=True)
        for f in shard_files(packed)
    ]
    feats = pa.concat_tables(parts) if parts else None
    if feats is None or feats.num_rows == 0:
        return table_to_packed(
            pq.read_table(shard_files(packed)[0], columns=columns).slice(0, 0), cfg.data.modalities
        )
    split = table_to_packed(feats, cfg.data.modalities)
    row = {u: i for i, u in enumerate(labels.column("id").to_pylist())}
    idx = np.array([row[u] for u in split.ids])
    probs = {
        task: fixed_list_to_numpy(labels.column(f"{task}_probs"))[idx]
        for task in ("emotion", "intent")
    }
    return with_pseudo_targets(
        split,
        labels.column("emotion").to_numpy()[idx],
        labels.column("intent").to_numpy()[idx],
        labels.column("weight").to_numpy()[idx],
        probs,
        cfg.pseudo,
    )


def fixed_list_to_numpy(column) -> np.ndarray:
    """A pyarrow column of fixed-size float lists -> (N, C) float32."""
    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    return col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T) renormalised per row: T < 1 sharpens, T = 1 keeps, T > 1 flattens. (N, C) -> (N,
    C)."""
    if temperature == 1.0:
        return probs.astype(np.float32)
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def with_pseudo_targets(
    split: PackedSplit,
    emotion: np.ndarray,
    intent: np.ndarray,
    weight: np.ndarray,
    probs: dict[str, np.ndarray],
    cfg: PseudoLabelConfig,
) -> PackedSplit:
    """Pool rows with their training targets: the hard pseudo labels (-1 = not kept for that task),
    or with pseudo.targets=soft the (sharpened) teacher distribution for each kept task."""
    split.emotion, split.intent = emotion.astype(np.int64), intent.astype(np.int64)
    split.weight = weight.astype(np.float32)
    split.pseudo = np.ones(len(split), dtype=bool)
    if cfg.targets == "soft":
        split.soft = {}
        for task, hard in (("emotion", split.emotion), ("intent", split.intent)):
            q = sharpen(probs[task], cfg.soft_temperature)
            split.soft[task] = np.where((hard >= 0)[:, None], q, 0.0).astype(np.float32)
        split.emotion = np.full(len(split), MISSING_ID, dtype=np.int64)
        split.intent = np.full(len(split), MISSING_ID, dtype=np.int64)
    return split


def pseudo_rows(pool: PackedSplit, sel: Selection, cfg: PseudoLabelConfig) -> PackedSplit:
    """The selected rows of the (in-memory) pool with their targets: what a sweep trial adds."""
    rows = np.flatnonzero(sel.selected)
    return with_pseudo_targets(
        pool.subset(rows),
        sel.emotion[rows],
        sel.intent[rows],
        sel.weight[rows],
        {"emotion": sel.emo_probs[rows], "intent": sel.int_probs[rows]},
        cfg,
    )
