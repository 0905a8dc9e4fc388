"""Atomic writers: write to a temp file or directory beside the target, then rename. Every output
of the package is written through these, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def prove_writable(path: Path) -> None:
    """Create directory `path` if needed and write (then remove) a probe file in it; OSError when
    that is impossible (read-only disk, a path under a file, no permission)."""
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
    os.close(fd)
    os.unlink(probe)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it is writable; raise a clear error otherwise."""
    path = Path(path)
    try:
        prove_writable(path)
    except OSError as exc:
        raise PermissionError(
            f"output directory is not writable: {path} ({exc.strerror or exc})"
        ) from None
    return path


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temp dir onto `target`, replacing an older one without a gap of nothing."""
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


HOST = socket.gethostname()
# .<target>.tmp-<pid>[@<host>]: an atomic_dir temp dir (no host: written before hosts were named)
_TEMP_DIR = re.compile(r"\.(?P<target>.+)\.tmp-(?P<pid>\d+)(?:@(?P<host>.+))?")


def pid_alive(pid: int) -> bool:
    """Is `pid` a live process on this host (a zombie counts: its parent has not reaped it)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_dirs(parent: str | os.PathLike, target_pattern: str = ".+") -> list[Path]:
    """Delete the temp dirs atomic_dir left in `parent` for targets matching `target_pattern`
    when its process was killed (SIGKILL, OOM, power loss): those whose pid is not alive here.
    A live process's temp dir (a write in progress), or one from another host (a shared disk),
    is never touched. Returns the removed paths."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        m = _TEMP_DIR.fullmatch(entry.name)
        if not m or not re.fullmatch(target_pattern, m["target"]) or not entry.is_dir():
            continue
        if m["host"] not in (None, HOST) or pid_alive(int(m["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp dir beside `target`; on success it replaces `target`, on any error it is
    removed, so `target` is either the old complete directory or the new complete one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}@{HOST}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temp file beside `target` for writing; it is renamed onto `target` when the block ends
    without an error, and deleted otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """A file the user asked for may be written (or replaced) at `path`: not a directory, not
    under a file, and never inside a checkpoint directory (its model.pt, config.yaml, ...)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    for up in (parent, *parent.parents):
        if up.exists() and not up.is_dir():
            raise ValueError(f"{what} {path}: {up} is a file, not a directory")
    if any((parent / marker).is_file() for marker in CHECKPOINT_MARKERS):
        raise ValueError(
            f"{what} {path} is inside a checkpoint directory ({parent}); write elsewhere"
        )
    return path


def check_replaceable_dir(path: str | os.PathLike, own_marker: str, what: str) -> Path:
    """A directory a command is about to replace as a whole: absent, empty, or its own earlier
    output (it holds `own_marker`). Anything else (a run directory, unrelated files) is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / own_marker).is_file():
        raise ValueError(
            f"{what} {path} already holds other files (no {own_marker}: it is not an earlier "
            f"{what}); choose a new or empty directory"
        )
    return path


# files that make a directory a checkpoint (train.checkpoint: model.pt or ensemble.json + config)
CHECKPOINT_MARKERS = ("model.pt", "ensemble.json")


class DirectoryInUse(RuntimeError):
    """Another live process holds the lock of an output directory."""


@contextmanager
def locked_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (its `.lock` file, flock) while a run writes there:
    a second writer fails at once naming the holder's pid. The kernel drops the lock when the
    holder exits, also when it is killed, so a crash never leaves a stale lock."""
    import fcntl

    directory = Path(directory)
    path = directory / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DirectoryInUse(
                f"{directory} is in use by another run (pid {holder}); wait for it to finish "
                "or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield directory
    finally:
        os.close(fd)  # releases the lock
