"""Batches: dicts of tensors with padding masks, built from a PackedSplit.

Batch contract (B = batch size, T_M = longest sequence of modality M in this batch):
    <M>:       (B, T_M, D_M) float32, zero beyond each row's length
    <M>_mask:  (B, T_M) bool, True on real frames
    emotion, intent: (B,) int64, -1 where the row has no label for that task
    weight:    (B,) float32 per-sample loss weight (1 for gold rows)
    pseudo:    (B,) bool, True on rows from the unlabelled pool
    emotion_soft, intent_soft: (B, C) float32 soft targets, only when the split has them
    index:     (B,) int64 row index into the split (to recover ids)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import torch

from meiju_ray.data.packing import PackedSplit

Batch = dict[str, torch.Tensor]


class BufferPool:
    """Recycles the padded arrays of batches the consumer has dropped.

    A fresh 20 MB array per batch and modality costs page faults (and, with transparent huge pages,
    compaction) on every batch; refilling an array whose pages are already mapped is a plain memcpy,
    and the data path is memory-bandwidth bound. An array is reused only when nothing but the pool
    refers to it any more (every tensor made from it has been freed), so a batch the consumer still
    holds is never overwritten."""

    def __init__(self, per_key: int = 3):
        self.per_key = per_key
        self.free: dict[str, list[np.ndarray]] = {}

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        need = int(np.prod(shape))
        buffers = self.free.setdefault(key, [])
        for k in range(len(buffers)):
            buf = buffers[k]
            # 3 references = the list, `buf` and getrefcount's argument: no live tensor or view
            # uses it
            if sys.getrefcount(buf) > 3:
                continue
            if buf.size < need:  # idle but too small: grow it (sizes settle at the largest batch)
                buf = buffers[k] = np.empty(need, dtype=np.float32)
            return buf[:need].reshape(shape)
        buf = np.empty(need, dtype=np.float32)
        if len(buffers) < self.per_key:
            buffers.append(buf)
        return buf.reshape(shape)


def collate(split: PackedSplit, rows: np.ndarray, pool: BufferPool | None = None) -> Batch:
    """Pad the rows' sequences to this batch's maximum and build masks."""
    rows = np.asarray(rows, dtype=np.int64)
    batch: Batch = {}
    for name, values in split.values.items():
        offsets = split.offsets[name]
        lens = offsets[rows + 1] - offsets[rows]
        t_max = int(lens.max())
        shape = (len(rows), t_max, values.shape[1])
        padded = pool.take(name, shape) if pool is not None else np.empty(shape, dtype=np.float32)
        # every element is written once: the row's frames, then zeros on its (short, when
        # bucketed) tail
        for b, (i, n) in enumerate(zip(rows.tolist(), lens.tolist())):
            padded[b, :n] = values[offsets[i] : offsets[i] + n]
            if n < t_max:  # (skipping the empty tails saves a numpy call per row)
                padded[b, n:] = 0.0
        batch[name] = torch.from_numpy(padded)
        batch[f"{name}_mask"] = torch.from_numpy(np.arange(t_max)[None, :] < lens[:, None])
    batch["emotion"] = torch.from_numpy(split.emotion[rows].copy())
    batch["intent"] = torch.from_numpy(split.intent[rows].copy())
    batch["weight"] = torch.from_numpy(split.weight[rows].astype(np.float32))
    batch["pseudo"] = torch.from_numpy(split.is_pseudo()[rows].copy())
    if split.soft is not None:
        for task, probs in split.soft.items():
            batch[f"{task}_soft"] = torch.from_numpy(probs[rows].astype(np.float32))
    batch["index"] = torch.from_numpy(rows.copy())
    return batch


def batch_order(
    split: PackedSplit,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None,
    bucket_by_length: bool,
    rows: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices per batch.

    With bucketing, rows are shuffled, cut into pools of 50 batches, sorted by length inside a
    pool and cut into batches whose order is shuffled again: batches stay random but hold
    similar lengths, so little compute goes into padding.
    """
    order = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    if shuffle and rng is not None:
        order = rng.permutation(order)
    n = len(order)
    if not bucket_by_length:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    cost = sum(split.lengths(name) * split.values[name].shape[1] for name in split.values)
    pool = batch_size * 50
    batches = []
    for start in range(0, n, pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(cost[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle and rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iter_batches(
    split: PackedSplit,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    bucket_by_length: bool = True,
    rows: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Batches over all rows (or the given subset, e.g. this worker's shard)."""
    rng = np.random.default_rng(seed) if shuffle else None
    pool = BufferPool()
    for batch_rows in batch_order(split, batch_size, shuffle, rng, bucket_by_length, rows):
        yield collate(split, batch_rows, pool)


def epoch_rows(split: PackedSplit, pool_ratio: float, seed: int) -> np.ndarray | None:
    """This epoch's rows: every gold row plus a fresh random draw of pool rows, pool_ratio x the
    gold count (pseudo.epoch_pool_ratio); None = every row (ratio 0, or the pool is that small).
    Bounds a student's epoch when the pool is much larger than the labelled set."""
    if pool_ratio <= 0 or split.pseudo is None:
        return None
    pseudo = split.is_pseudo()
    gold, pool = np.flatnonzero(~pseudo), np.flatnonzero(pseudo)
    k = int(round(pool_ratio * len(gold)))
    if k >= len(pool):
        return None
    pick = np.random.default_rng(seed).choice(pool, k, replace=False)
    return np.sort(np.concatenate([gold, pick]))


def shard_rows(n: int, rank: int, world_size: int, seed: int) -> np.ndarray:
    """This rank's rows for one epoch: a seeded permutation dealt round-robin, truncated so
    every rank gets the same count (DDP needs the same number of steps on every rank)."""
    per_rank = n // world_size
    perm = np.random.default_rng(seed).permutation(n)
    return perm[rank::world_size][:per_rank]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch to `device`. On cuda the CPU tensors are pinned first so the host-to-device
    copies can run asynchronously (non_blocking); on cpu nothing is pinned or copied."""
    device = torch.device(device)
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {
        k: (v.pin_memory() if v.device.type == "cpu" and not v.is_pinned() else v).to(
            device, non_blocking=True
        )
        for k, v in batch.items()
    }
