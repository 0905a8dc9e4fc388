"""The official MEIJU Track 1 on-disk layout: split list files and per-utterance .npy features.

    <root>/Annotation/{Training,Validation,Testing}_files.txt
        "<id>.mp4 <emo> <int>" | "<id> <emo> <int>" | "<id>[.mp4]"
    <root>/Annotation/features/<folder>/<id>.npy
        float [T, D], T varies per utterance and modality
    <root>/NoAnnotation/features/<folder>/<id>.npy
        unlabelled pool (optional list NoAnnotation_files.txt)

Every problem is raised as `DataError` naming the file (and line) at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meiju_ray.config import DataConfig, ModalityConfig
from meiju_ray.labels import MISSING_ID, MISSING_LABELS

UNLABELED = "NoAnnotation"
_VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".wav", ".npy")


class DataError(ValueError):
    """Input data is missing or malformed. The message names the file (and line)."""


@dataclass(frozen=True)
class SplitList:
    """Ids and integer labels of one split, in list order. Labels are MISSING_ID where unknown."""

    name: str
    path: Path | None
    ids: list[str]
    emotion: np.ndarray  # (N,) int64
    intent: np.ndarray  # (N,) int64
    lines: tuple[int, ...] = ()  # the list file's line of each id (empty when not from a file)

    @property
    def labelled(self) -> bool:
        return bool((self.emotion >= 0).any() or (self.intent >= 0).any())


def resolve(root: str | os.PathLike, path: str) -> Path:
    """A config path: absolute as given, relative to the data root otherwise."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def list_path(cfg: DataConfig, split: str) -> Path:
    base = cfg.unlabeled_dir if split == UNLABELED else cfg.annotation_dir
    return resolve(cfg.root, base) / f"{split}_files.txt"


def feature_root(cfg: DataConfig, split: str) -> Path:
    return resolve(cfg.root, cfg.unlabeled_feature_dir if split == UNLABELED else cfg.feature_dir)


def strip_extension(token: str) -> str:
    for ext in _VIDEO_EXTS:
        if token.lower().endswith(ext):
            return token[: -len(ext)]
    return token


def _label_id(value: str, labels: list[str], path: Path, lineno: int, task: str) -> int:
    v = value.strip().lower()
    if v in MISSING_LABELS:
        return MISSING_ID
    try:
        return labels.index(v)
    except ValueError:
        raise DataError(
            f"{path}:{lineno}: unknown {task} label {value!r} (known: {', '.join(labels)})"
        ) from None


def check_plain_id(utt: str, where: str) -> None:
    """Ids name files (`<id>.npy` under a feature folder): only a plain file name is one, so an id
    can never make a reader (or a writer) leave its folder."""
    if utt in (".", "..") or "/" in utt or "\\" in utt or "\0" in utt or os.path.isabs(utt):
        raise DataError(f"{where}: id {utt!r} is not a plain file name (no '/', '\\' or '..')")


def read_split_list(
    path: Path, emotion_labels: list[str], intent_labels: list[str], name: str = ""
) -> SplitList:
    """Parse a list file: one utterance per line, `<id>[.ext] [<emotion> <intent>]`.

    Lines with only an id (e.g. Testing) get MISSING_ID labels. Blank lines and lines starting
    with '#' are skipped. Commas are accepted as separators too (CSV-like lists).
    """
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    ids: list[str] = []
    emo: list[int] = []
    intent: list[int] = []
    seen: dict[str, int] = {}
    lines: list[int] = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 BOM (spreadsheet exports) is dropped
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if lineno == 1 and parts[0].lower() in ("filename", "name", "id"):
            continue  # a CSV header
        if len(parts) not in (1, 3):
            raise DataError(
                f"{path}:{lineno}: expected '<id> <emotion> <intent>' or '<id>', got {line!r}"
            )
        utt = strip_extension(parts[0])
        check_plain_id(utt, f"{path}:{lineno}")
        if utt in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {utt!r} (first on line {seen[utt]})")
        seen[utt] = lineno
        ids.append(utt)
        lines.append(lineno)
        if len(parts) == 3:
            emo.append(_label_id(parts[1], emotion_labels, path, lineno, "emotion"))
            intent.append(_label_id(parts[2], intent_labels, path, lineno, "intent"))
        else:
            emo.append(MISSING_ID)
            intent.append(MISSING_ID)
    if not ids:
        raise DataError(f"{path}: no utterances listed")
    return SplitList(
        name or path.stem.replace("_files", ""),
        path,
        ids,
        np.asarray(emo, dtype=np.int64),
        np.asarray(intent, dtype=np.int64),
        tuple(lines),
    )


def check_splits(cfg: DataConfig, test: bool = False, pool: bool = False) -> None:
    """Before any training: Training and Validation lines carry both labels, and no id is in two
    of Training / Validation / Testing / the pool (a leak that would inflate every score).
    `test`, `pool`: also read those lists (the pipeline needs them; found late otherwise)."""
    lists = [split_list(cfg, cfg.train_split), split_list(cfg, cfg.val_split)]
    for sl in lists:
        bad = np.flatnonzero((sl.emotion < 0) & (sl.intent < 0))  # '-' masks one task only
        if len(bad):
            where = f"{sl.path}:{sl.lines[bad[0]]}" if sl.lines else str(sl.path)
            raise DataError(
                f"{where}: id {sl.ids[bad[0]]!r} has no labels ({len(bad)} of {len(sl.ids)} "
                f"{sl.name} lines); labelled splits need '<id> <emotion> <intent>' on every line"
            )
    if test:
        lists.append(split_list(cfg, cfg.test_split))
    if pool:
        unlabelled = split_list(cfg, UNLABELED)
        if not unlabelled.ids:
            raise DataError(f"the unlabelled pool under {cfg.root} lists no ids")
        lists.append(unlabelled)
    owner: dict[str, SplitList] = {}
    for sl in lists:
        for i, utt in enumerate(sl.ids):
            first = owner.setdefault(utt, sl)
            if first is not sl:
                where = f"{sl.path}:{sl.lines[i]}" if sl.lines else str(sl.path)
                raise DataError(
                    f"{where}: id {utt!r} is also in {first.name} ({first.path}); an utterance "
                    "belongs to one split only"
                )


def unlabeled_list(cfg: DataConfig) -> SplitList:
    """The unlabelled pool: its list file if present, else the ids found in the first modality
    folder."""
    path = list_path(cfg, UNLABELED)
    if path.is_file():
        return read_split_list(path, cfg.emotion_labels, cfg.intent_labels, UNLABELED)
    folder = feature_root(cfg, UNLABELED) / cfg.modalities[0].folder
    if not folder.is_dir():
        raise DataError(f"unlabelled pool not found: neither {path} nor {folder} exists")
    ids = sorted(p.stem for p in folder.glob("*.npy"))
    if not ids:
        raise DataError(f"unlabelled pool {folder} holds no .npy files")
    missing = np.full(len(ids), MISSING_ID, dtype=np.int64)
    return SplitList(UNLABELED, None, ids, missing, missing.copy())


def split_list(cfg: DataConfig, split: str) -> SplitList:
    if split == UNLABELED:
        return unlabeled_list(cfg)
    return read_split_list(list_path(cfg, split), cfg.emotion_labels, cfg.intent_labels, split)


def feature_path(cfg: DataConfig, split: str, modality: ModalityConfig, utt: str) -> Path:
    return feature_root(cfg, split) / modality.folder / f"{utt}.npy"


def load_feature(path: Path, modality: ModalityConfig) -> np.ndarray:
    """Load one [T, D] float array and check it; returns float32 [T', D] (T' <= max_len if set)."""
    if not path.is_file():
        raise DataError(f"missing feature file: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt/truncated files raise many different types
        why = "not a numeric .npy array" if "pickle" in str(exc) else str(exc)
        raise DataError(f"unreadable feature file {path}: {why}") from None
    if arr.ndim == 1 and arr.shape[0] == modality.dim:
        arr = arr[None, :]  # an utterance-level vector is a T=1 sequence
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D [T, D] array, got shape {arr.shape}")
    if arr.shape[1] != modality.dim:
        raise DataError(
            f"{path}: feature dim D={arr.shape[1]} but data.modalities '{modality.name}' "
            f"(folder {modality.folder}) says dim={modality.dim}"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{path}: T=0 (no frames); write at least one (zero) row")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{path}: dtype {arr.dtype} is not a real number type (float or int)")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or Inf values")
    return subsample_frames(arr, modality.max_len)


def subsample_frames(arr: np.ndarray, max_len: int) -> np.ndarray:
    """[T, D] -> at most max_len frames, evenly spaced over T (0 = no limit)."""
    if max_len and arr.shape[0] > max_len:
        keep = np.linspace(0, arr.shape[0] - 1, max_len).round().astype(np.int64)
        arr = arr[keep]
    return arr
