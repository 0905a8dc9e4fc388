"""One video -> one result, for any of the media extractors (audio, visual, ASR). No Ray here.

`build_extractor(kind, cfg)` loads the model once (an actor's constructor calls it);
`extract_one(extractor, id, path)` runs it on one video and turns any failure into a
`MediaResult` naming the file, so one bad video never stops a job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meiju_ray.features.media import MediaError

KINDS = ("audio", "visual", "asr")


@dataclass
class MediaResult:
    """What an extraction job returns for one id: features (or a text for ASR), or the failure."""

    id: str
    value: np.ndarray | str | None  # [T, D] float32 | transcript | None on failure
    dim: int = 0  # the extractor's D (also on failure: zero fills need it); 0 for ASR
    error_kind: str = ""  # one of media.MEDIA_ERRORS, or "error" (anything else)
    error: str = ""  # one line naming the file


@dataclass
class Extractor:
    kind: str
    fn: Callable[[str], np.ndarray | str]
    dim: int  # 0 for ASR
    name: str  # the model (path or hub name) or openSMILE set


def build_extractor(kind: str, cfg: dict) -> Extractor:
    """Load the model of `kind` with its config fields (AudioFeatureConfig / VisualFeatureConfig /
    AsrConfig)."""
    if kind == "audio":
        from meiju_ray.features.audio import AudioFeatureConfig, load_audio_extractor

        ex = load_audio_extractor(AudioFeatureConfig(**cfg))
    elif kind == "visual":
        from meiju_ray.features.visual import VisualFeatureConfig, load_visual_extractor

        ex = load_visual_extractor(VisualFeatureConfig(**cfg))
    elif kind == "asr":
        from meiju_ray.features.asr import AsrConfig, WhisperTranscriber

        ex = WhisperTranscriber(AsrConfig(**cfg))
    else:
        raise ValueError(f"extractor kind {kind!r} is not one of {list(KINDS)}")
    return Extractor(kind, ex, int(getattr(ex, "dim", 0)), str(getattr(ex, "name", "")))


def extract_one(ex: Extractor, utt: str, path: str) -> MediaResult:
    try:
        value = ex.fn(path)
    except MediaError as exc:
        return MediaResult(utt, None, ex.dim, exc.kind, str(exc))
    except Exception as exc:  # a decoder or model failure on one file must not stop the job
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        return MediaResult(utt, None, ex.dim, "error", f"{path}: {type(exc).__name__}: {why}")
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value, dtype=np.float32)
        if value.ndim != 2 or value.shape[0] == 0:
            return MediaResult(utt, None, ex.dim, "error", f"{path}: got shape {value.shape}")
    return MediaResult(utt, value, ex.dim)


def check_model_available(name: str, what: str) -> None:
    """Fail early, in the driver, with one line: a local directory must hold config.json; with
    HF_HUB_OFFLINE=1 (the default) a hub name must be in the local HF cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"{what} {name}: no config.json in that directory")
        return
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ValueError(f"{what} {name}: directory not found")
    if os.environ.get("HF_HUB_OFFLINE", "1") not in ("1", "true", "True", "ON", "YES"):
        return  # online: from_pretrained downloads it
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    if not isinstance(found, str):
        raise ValueError(
            f"{what} {name!r}: not a local directory and not in the HF cache (offline; "
            "HF_HUB_OFFLINE=0 lets it download, or pass a save_pretrained directory)"
        )


def run_in_process(
    kind: str,
    cfg: dict,
    items: list[tuple[str, str]],
    sink: Callable[[list[MediaResult]], None],
    batch_size: int = 4,
) -> dict:
    """A `features.release.MediaJob` without Ray: one extractor in this process, videos in order
    (for debugging a single file, and the inner ring's tests). The CLI runs the Ray Data job."""
    import time

    t0 = time.time()
    ex = build_extractor(kind, cfg)
    for start in range(0, len(items), batch_size):
        sink([extract_one(ex, u, p) for u, p in items[start : start + batch_size]])
    seconds = time.time() - t0
    return {"videos": len(items), "seconds": round(seconds, 1), "actors": 0}
