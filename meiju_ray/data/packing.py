"""Pack per-utterance .npy features once into columnar Parquet shards, and read them back.

Shard schema (one row per utterance, list order kept across shards part-00000, part-00001, ...):
    id: string, emotion: int64, intent: int64          (-1 = unlabelled for that task)
    <M>: large_list<float32>                           flattened [T_M * D_M] frames of modality M
    <M>_len: int32                                     T_M
A packed split directory is complete only when its `manifest.json` exists; it is built in a temp
directory and renamed into place, so an interrupted pack is never mistaken for a finished one.
The cache key hashes the list file, the modality config and every feature file's size + mtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from meiju_ray.config import ConfigError, DataConfig, ModalityConfig
from meiju_ray.data.layout import (
    DataError,
    SplitList,
    feature_path,
    load_feature,
    read_split_list,
    resolve,
    split_list,
)
from meiju_ray.fileio import atomic_dir, prove_writable, remove_stale_temp_dirs

log = logging.getLogger("meiju_ray")
MANIFEST = "manifest.json"
PACK_VERSION = 1
DEFAULT_CACHE = ".meiju_packed"  # under data.root, unless data.cache_dir is set
PACK_NAME = r".+-[0-9a-f]{16}"  # <split>-<fingerprint>: the names pack_split writes


@dataclass
class PackedSplit:
    """A split held in memory as one flat frame array per modality plus row offsets.

    values[M]: (sum_T, D) float32; offsets[M]: (N + 1,) int64 so row i is values[M][o[i]:o[i+1]].
    weight is 1.0 for gold rows; pseudo-labelled rows carry their own weight.
    soft: optional {"emotion": (N, C_e), "intent": (N, C_i)} float32 target distributions for rows
    whose hard label is -1 (soft pseudo-labels; a row of zeros = no target for that task).
    pseudo: optional (N,) bool, True on rows that came from the unlabelled pool.
    """

    ids: list[str]
    emotion: np.ndarray
    intent: np.ndarray
    weight: np.ndarray
    values: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray]
    soft: dict[str, np.ndarray] | None = None
    pseudo: np.ndarray | None = None

    def is_pseudo(self) -> np.ndarray:
        return self.pseudo if self.pseudo is not None else np.zeros(len(self), dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self, name: str) -> np.ndarray:
        return np.diff(self.offsets[name])

    def frames(self, name: str, i: int) -> np.ndarray:
        o = self.offsets[name]
        return self.values[name][o[i] : o[i + 1]]

    def subset(self, rows: np.ndarray) -> PackedSplit:
        rows = np.asarray(rows, dtype=np.int64)
        values, offsets = {}, {}
        for name in self.values:
            lens = self.lengths(name)[rows]
            offsets[name] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            values[name] = (
                np.concatenate([self.frames(name, int(i)) for i in rows])
                if len(rows)
                else self.values[name][:0]
            )
        return PackedSplit(
            [self.ids[i] for i in rows],
            self.emotion[rows],
            self.intent[rows],
            self.weight[rows],
            values,
            offsets,
            soft=None if self.soft is None else {k: v[rows] for k, v in self.soft.items()},
            pseudo=None if self.pseudo is None else self.pseudo[rows],
        )

    @staticmethod
    def concat(parts: list[PackedSplit]) -> PackedSplit:
        names = list(parts[0].values)
        values = {n: np.concatenate([p.values[n] for p in parts]) for n in names}
        offsets = {}
        for n in names:
            lens = np.concatenate([p.lengths(n) for p in parts])
            offsets[n] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        soft = None
        with_soft = [p.soft for p in parts if p.soft is not None]
        if with_soft:  # rows without soft targets get rows of zeros (= no soft target)
            soft = {
                k: np.concatenate(
                    [
                        p.soft[k]
                        if p.soft is not None
                        else np.zeros((len(p), v.shape[1]), np.float32)
                        for p in parts
                    ]
                )
                for k, v in with_soft[0].items()
            }
        pseudo = None
        if any(p.pseudo is not None for p in parts):
            pseudo = np.concatenate([p.is_pseudo() for p in parts])
        return PackedSplit(
            sum((p.ids for p in parts), []),
            np.concatenate([p.emotion for p in parts]),
            np.concatenate([p.intent for p in parts]),
            np.concatenate([p.weight for p in parts]),
            values,
            offsets,
            soft=soft,
            pseudo=pseudo,
        )


def cache_root(cfg: DataConfig) -> Path:
    """Where packed shards go: data.cache_dir (relative to data.root), else <root>/.meiju_packed;
    when the data root is read-only (the normal case for release data) a folder of the user's
    cache instead, one per data root (`user_cache_root`)."""
    if cfg.cache_dir:
        return resolve(cfg.root, cfg.cache_dir)
    beside = Path(cfg.root) / DEFAULT_CACHE
    if _may_write(beside if beside.exists() else Path(cfg.root)):
        return beside
    return user_cache_root(cfg.root)


def user_cache_root(data_root: str | os.PathLike) -> Path:
    """$XDG_CACHE_HOME (default ~/.cache)/meiju_ray/packed/<root name>-<hash of its real path>:
    two data roots never share a folder, so packing one never drops the other's packs."""
    real = os.path.realpath(data_root)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(real.encode()).hexdigest()[:12]
    return base / "meiju_ray" / "packed" / f"{Path(real).name}-{digest}"


def _may_write(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


_told_fallback: set[Path] = set()  # data roots whose cache move was already logged


def writable_cache_root(cfg: DataConfig) -> Path:
    """cache_root(cfg), created and proven writable before a pack starts; a one-line ConfigError
    naming data.cache_dir otherwise (a path under a file, a read-only disk)."""
    root = cache_root(cfg)
    try:
        prove_writable(root)
    except OSError as exc:
        why = _not_writable_because(root, exc)
        if cfg.cache_dir:
            raise ConfigError(
                f"config key 'data.cache_dir': cannot write packed shards to {root} ({why}); "
                "set data.cache_dir to a writable directory"
            ) from None
        raise ConfigError(
            f"the data root {cfg.root} is read-only and the user cache {root} is not writable "
            f"either ({why}); set data.cache_dir to a writable directory for the packed shards"
        ) from None
    if not cfg.cache_dir and root != Path(cfg.root) / DEFAULT_CACHE and root not in _told_fallback:
        _told_fallback.add(root)
        log.info(
            "data root %s is read-only: packed shards go to %s (set data.cache_dir to choose "
            "another place; on a multi-node cluster, a path every node mounts)",
            cfg.root,
            root,
        )
    return root


def _not_writable_because(path: Path, exc: OSError) -> str:
    for up in (path, *path.parents):
        if up.exists() and not up.is_dir():
            return f"{up} is a file, not a directory"
    return exc.strerror or str(exc)


def fingerprint(cfg: DataConfig, split: SplitList) -> str:
    """Hash of everything the packed rows depend on (list contents, modalities, file stats)."""
    h = hashlib.sha256()
    h.update(f"v{PACK_VERSION}".encode())
    h.update(json.dumps([[m.name, m.folder, m.dim, m.max_len] for m in cfg.modalities]).encode())
    h.update(json.dumps([cfg.emotion_labels, cfg.intent_labels]).encode())
    h.update("\n".join(split.ids).encode())
    h.update(split.emotion.tobytes() + split.intent.tobytes())
    for m in cfg.modalities:
        for utt in split.ids:
            path = feature_path(cfg, split.name, m, utt)
            try:
                st = path.stat()
            except FileNotFoundError:
                listed = f"{split.path}" if split.path else f"the {split.name} pool"
                raise DataError(
                    f"missing feature file: {path} (id {utt!r} listed in {listed})"
                ) from None
            h.update(f"{utt}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def packed_columns(modalities: list[ModalityConfig], labels: bool = True) -> list[str]:
    """Column names of a packed shard: id, (emotion, intent,) then <M>, <M>_len per modality."""
    return (
        ["id"]
        + (["emotion", "intent"] if labels else [])
        + [c for m in modalities for c in (m.name, f"{m.name}_len")]
    )


def schema(modalities: list[ModalityConfig]) -> pa.Schema:
    fields = [
        pa.field("id", pa.string()),
        pa.field("emotion", pa.int64()),
        pa.field("intent", pa.int64()),
    ]
    for m in modalities:
        fields += [
            pa.field(m.name, pa.large_list(pa.float32())),
            pa.field(f"{m.name}_len", pa.int32()),
        ]
    return pa.schema(
        fields, metadata={"modalities": json.dumps({m.name: m.dim for m in modalities})}
    )


def rows_to_table(
    ids: list[str],
    emotion: Iterable[int],
    intent: Iterable[int],
    frames: dict[str, list[np.ndarray]],
    modalities: list[ModalityConfig],
) -> pa.Table:
    """Build one shard table from per-row frame arrays ([T, D] float32 each)."""
    cols: dict[str, pa.Array] = {
        "id": pa.array(ids, pa.string()),
        "emotion": pa.array(list(emotion), pa.int64()),
        "intent": pa.array(list(intent), pa.int64()),
    }
    for m in modalities:
        arrs = frames[m.name]
        lens = np.array([a.shape[0] for a in arrs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens * m.dim)]).astype(np.int64)
        flat = np.concatenate([a.reshape(-1) for a in arrs]).astype(np.float32, copy=False)
        cols[m.name] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
        cols[f"{m.name}_len"] = pa.array(lens.astype(np.int32))
    return pa.Table.from_pydict(cols, schema=schema(modalities))


def write_shards(tables: Iterable[pa.Table], out_dir: Path, manifest: dict) -> Path:
    """Write shard tables into `out_dir` atomically (temp dir + rename; manifest last)."""
    with atomic_dir(out_dir) as tmp:
        rows = 0
        for i, table in enumerate(tables):
            # float features barely compress; plain encoding reads faster than snappy + dictionary
            pq.write_table(
                table,
                tmp / f"part-{i:05d}.parquet",
                compression="none",
                use_dictionary=False,
                row_group_size=256,  # readers stream 256 rows at a time, not a whole shard
                write_page_checksum=True,  # a damaged cached shard is found on read, never used
            )
            rows += table.num_rows
        manifest = {**manifest, "rows": rows, "version": PACK_VERSION}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(out_dir)


def _shard_tables(
    cfg: DataConfig, split: SplitList, progress: Callable[[str], None] | None
) -> Iterator[pa.Table]:
    n = len(split.ids)
    t0 = time.time()
    for start in range(0, n, cfg.rows_per_shard):
        rows = range(start, min(start + cfg.rows_per_shard, n))
        frames = {
            m.name: [load_feature(feature_path(cfg, split.name, m, split.ids[i]), m) for i in rows]
            for m in cfg.modalities
        }
        yield rows_to_table(
            [split.ids[i] for i in rows],
            split.emotion[list(rows)],
            split.intent[list(rows)],
            frames,
            cfg.modalities,
        )
        if progress:
            progress(f"packed {rows.stop}/{n} {split.name} rows ({time.time() - t0:.1f}s)")


def pack_split(
    cfg: DataConfig, split: str, progress: Callable[[str], None] | None = None, force: bool = False
) -> Path:
    """Pack one split (or the unlabelled pool, split='NoAnnotation'); reuse the cache if current."""
    listing = split_list(cfg, split)
    key = fingerprint(cfg, listing)
    out = cache_root(cfg) / f"{split}-{key}"
    removed = remove_stale_temp_dirs(out.parent, PACK_NAME)
    if removed and progress:
        progress(
            f"removed {len(removed)} temp dir(s) of killed packs: {', '.join(map(str, removed))}"
        )
    if (out / MANIFEST).is_file() and not force:
        if cache_is_intact(out):
            return out
        if progress:
            progress(
                f"{out}: the cached shards do not match their manifest (a file missing or "
                "truncated); packing again"
            )
    writable_cache_root(cfg)
    manifest = {
        "split": split,
        "fingerprint": key,
        "modalities": [
            {"name": m.name, "folder": m.folder, "dim": m.dim, "max_len": m.max_len}
            for m in cfg.modalities
        ],
    }
    write_shards(_shard_tables(cfg, listing, progress), out, manifest)
    # older packs of the same split are stale now; drop them so the cache does not grow forever
    for old in cache_root(cfg).glob(f"{split}-*"):
        if old != out and old.is_dir() and (old / MANIFEST).is_file():
            shutil.rmtree(old, ignore_errors=True)
    return out


def cache_is_intact(packed_dir: Path) -> bool:
    """Every shard's Parquet footer readable and the row counts adding up to the manifest's."""
    try:
        manifest = json.loads((Path(packed_dir) / MANIFEST).read_text())
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(packed_dir))
    except (OSError, ValueError, pa.ArrowException, DataError):
        return False
    return rows == manifest.get("rows")


def shard_files(packed_dir: Path) -> list[Path]:
    packed_dir = Path(packed_dir)
    if not (packed_dir / MANIFEST).is_file():
        raise DataError(f"{packed_dir}: not a complete packed split (no {MANIFEST})")
    return sorted(packed_dir.glob("part-*.parquet"))


def table_to_packed(table: pa.Table, modalities: list[ModalityConfig]) -> PackedSplit:
    """Arrow table (schema above) -> PackedSplit with flat per-modality arrays."""
    values, offsets = {}, {}
    for m in modalities:
        if m.name not in table.column_names:
            raise DataError(
                f"packed data has no column for modality '{m.name}' (has {table.column_names})"
            )
        col = table.column(m.name).combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        lens = table.column(f"{m.name}_len").to_numpy().astype(np.int64)
        if flat.size != int(lens.sum()) * m.dim:
            raise DataError(
                f"packed modality '{m.name}' does not match dim={m.dim} "
                f"({flat.size} values for {int(lens.sum())} frames)"
            )
        values[m.name] = flat.reshape(-1, m.dim)
        offsets[m.name] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    n = table.num_rows

    def column(
        name: str, default: float, dtype
    ) -> np.ndarray:  # labels/weights are optional columns
        if name in table.column_names:
            return table.column(name).to_numpy().astype(dtype)
        return np.full(n, default, dtype=dtype)

    return PackedSplit(
        table.column("id").to_pylist(),
        column("emotion", -1, np.int64),
        column("intent", -1, np.int64),
        column("weight", 1.0, np.float32),
        values,
        offsets,
    )


class CorruptShard(DataError):
    """A packed shard cannot be read back (damaged data pages, a bad checksum)."""


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One packed shard, its page checksums verified; CorruptShard naming it when unreadable."""
    try:
        return pq.read_table(
            path, columns=columns, memory_map=True, page_checksum_verification=True
        )
    except (OSError, pa.ArrowException) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptShard(f"{path}: unreadable packed shard ({why})") from None


def corrupt_shards(packed_dir: Path) -> list[Path]:
    """The shards of a packed split that cannot be read back in full (reads every one)."""
    bad = []
    for f in shard_files(packed_dir):
        try:
            read_shard(f)
        except CorruptShard:
            bad.append(f)
    return bad


def load_packed(packed_dir: Path, modalities: list[ModalityConfig]) -> PackedSplit:
    files = shard_files(packed_dir)
    cols = packed_columns(modalities)
    table = (
        pa.concat_tables([read_shard(f, cols) for f in files])
        if files
        else schema(modalities).empty_table()
    )
    return table_to_packed(table, modalities)


def load_split(
    cfg: DataConfig, split: str, progress: Callable[[str], None] | None = None
) -> PackedSplit:
    """Pack if needed (cached), then load into memory. A cached shard that cannot be read back is
    packed again (once), with a log line saying so."""
    packed = pack_split(cfg, split, progress)
    try:
        return load_packed(packed, cfg.modalities)
    except CorruptShard as exc:
        log.warning("%s; packing %s again", exc, split)
    return load_packed(pack_split(cfg, split, progress, force=True), cfg.modalities)


def with_withheld_labels(split: PackedSplit, truth_path: Path, cfg: DataConfig) -> PackedSplit:
    """`split` with the labels of a withheld-label list (e.g. <root>/hidden/Testing_labels.txt),
    matched by id; every row must have one."""
    truth = read_split_list(truth_path, cfg.emotion_labels, cfg.intent_labels, "truth")
    where = {u: i for i, u in enumerate(truth.ids)}
    missing = [u for u in split.ids if u not in where]
    if missing:
        raise DataError(f"{truth_path}: no label for id {missing[0]!r} ({len(missing)} missing)")
    rows = np.array([where[u] for u in split.ids], dtype=np.int64)
    split.emotion, split.intent = truth.emotion[rows], truth.intent[rows]
    return split
