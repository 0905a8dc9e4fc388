"""Decoding videos with PyAV (its wheel bundles the FFmpeg libraries; nothing shells out to ffmpeg).

    decode_audio(path)          -> float32 [N] mono at 16 kHz (resampled and down-mixed by FFmpeg)
    sample_frames(path, fps)    -> RGB uint8 frames [H, W, 3], one per 1/fps seconds of the video

Bad input raises `MediaError` (a `DataError`) naming the file, with a short `kind` the extraction
summary counts: unreadable (cannot open or decode), no_audio / no_video (no such stream), no_samples
(an audio stream with nothing in it), no_frames (a video stream that decodes to zero frames).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meiju_ray.data.layout import DataError

SAMPLE_RATE = 16_000
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv")
MEDIA_ERRORS = ("unreadable", "no_audio", "no_video", "no_samples", "no_frames")


class MediaError(DataError):
    """A video that cannot give what an extractor needs. `kind` is one of MEDIA_ERRORS."""

    def __init__(self, path: str | os.PathLike, kind: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path = str(path)
        self.kind = kind


def _open(path: str | os.PathLike):
    import av

    if not Path(path).is_file():
        raise MediaError(path, "unreadable", "file not found")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MediaError(path, "unreadable", f"cannot open as a media file ({exc})") from None


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream as float32 mono samples in [-1, 1] at `sample_rate` Hz."""
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no_audio", "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # resample by sample count; odd container timestamps never gap
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(path, "unreadable", f"audio decode error ({exc})") from None
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0)
    if samples.size == 0:
        raise MediaError(path, "no_samples", "the audio stream holds no samples")
    return np.nan_to_num(samples.astype(np.float32, copy=False))


def iter_frames(path: str | os.PathLike, fps: float, max_frames: int = 0) -> Iterator[np.ndarray]:
    """RGB uint8 frames of the first video stream, one per 1/fps seconds (the first frame at or
    after each tick); at most `max_frames` (0 = no limit). Raises MediaError for no video stream
    or zero decoded frames."""
    import av

    if fps <= 0:
        raise ValueError(f"frame sampling rate must be > 0, got {fps}")
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no_video", "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step, next_t, n, decoded = 1.0 / fps, None, 0, 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                t = frame.time
                if t is None:  # no timestamps: count frames at the stream's nominal rate
                    rate = float(stream.average_rate or stream.guessed_rate or 25)
                    t = (decoded - 1) / rate
                if next_t is None:
                    next_t = t
                if t + 1e-6 < next_t:
                    continue
                yield frame.to_ndarray(format="rgb24")
                n += 1
                while next_t <= t + 1e-6:
                    next_t += step
                if max_frames and n >= max_frames:
                    return
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(path, "unreadable", f"video decode error ({exc})") from None
        if n == 0:
            raise MediaError(path, "no_frames", "the video stream decodes to zero frames")


def sample_frames(path: str | os.PathLike, fps: float, max_frames: int = 0) -> list[np.ndarray]:
    return list(iter_frames(path, fps, max_frames))


def find_videos(folder: str | os.PathLike) -> dict[str, Path]:
    """{utterance id: video path} for the video files directly in `folder` (id = the file stem)."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."):
            if p.stem in found:
                raise DataError(
                    f"{folder}: two videos for id {p.stem!r}: {found[p.stem].name}, {p.name}"
                )
            found[p.stem] = p
    return found
