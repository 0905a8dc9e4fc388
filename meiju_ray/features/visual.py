"""Frame-level visual features [T, D]: face crops of sampled frames through a vision backbone.

    video --PyAV, `fps` frames/s--> RGB frames --OpenCV Haar cascade (largest face, margin)-->
        face crops --transformers backbone, one vector per crop--> [T, D], T = frames with a face

A video in which no frame has a detected face gives zeros [1, D], the official convention
(docs/baseline.md §6). `crop="frame"` skips the detector and embeds the whole frame (the README of
the official baseline describes that recipe for its ResNet-50 features).

The detector is the frontal-face Haar cascade that the `opencv-python-headless` wheel ships in
`cv2.data.haarcascades`: it runs offline with no download. The backbone
(`VisualFeatureConfig.model`) is anything `AutoModel` loads with an image processor: ViT,
ResNet-50 (microsoft/resnet-50), the image tower of a CLIP/SigLIP checkpoint (its
`vision_model`), by hub name (from the HF cache) or a local directory. No registry package
ships such weights (see docs/extraction.md), so there is no offline default backbone.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meiju_ray.features.media import iter_frames

POOLING = ("auto", "cls", "mean", "pooler")
CROPS = ("face", "frame")
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass
class VisualFeatureConfig:
    model: str = ""  # hub name or local directory of a ViT / ResNet / CLIP checkpoint
    fps: float = 3.0  # sampled frames per second of video
    max_frames: int = 0  # at most this many sampled frames per video (0 = all)
    crop: str = "face"  # face (Haar cascade) | frame (whole frame)
    # auto: CLS token for transformers, pooled map for CNNs | cls | mean (tokens / spatial) | pooler
    pooling: str = "auto"
    face_margin: float = 0.2  # crop box grown by this fraction of the face size on every side
    min_face: int = 40  # smallest face side in pixels (at the detection scale)
    detect_width: int = 640  # frames wider than this are downscaled for detection only
    cascade: str = DEFAULT_CASCADE  # a file in cv2.data.haarcascades, or a path
    batch_size: int = 32  # crops per forward pass
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        if not self.model:
            raise ValueError(
                "visual model: give a hub name (e.g. google/vit-base-patch16-224-in21k, "
                "microsoft/resnet-50, openai/clip-vit-base-patch32) or a local directory"
            )
        if self.pooling not in POOLING:
            raise ValueError(f"visual pooling {self.pooling!r} not in {list(POOLING)}")
        if self.crop not in CROPS:
            raise ValueError(f"visual crop {self.crop!r} not in {list(CROPS)}")
        if self.fps <= 0 or self.batch_size < 1 or self.max_frames < 0:
            raise ValueError("visual fps must be > 0, batch_size >= 1, max_frames >= 0")
        if not 0 <= self.face_margin <= 1 or self.min_face < 8 or self.detect_width < 64:
            raise ValueError("visual face_margin in [0, 1], min_face >= 8, detect_width >= 64")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"visual dtype {self.dtype!r} is not float32 or float16")


def default_folder(cfg: VisualFeatureConfig) -> str:
    base = Path(cfg.model.rstrip("/")).name or "visual"
    return f"{base}-{'face' if cfg.crop == 'face' else 'frame'}-FRA"


def cascade_path(name: str) -> str:
    import cv2

    path = Path(name).expanduser()
    if not path.is_file():
        path = Path(cv2.data.haarcascades) / name
    if not path.is_file():
        raise ValueError(f"face detector cascade not found: {name} (looked in {path.parent})")
    return str(path)


class FaceCropper:
    """The largest frontal face of a frame (Haar cascade), grown by a margin, as an RGB crop."""

    def __init__(self, cfg: VisualFeatureConfig):
        import cv2

        self.cv2 = cv2
        self.cfg = cfg
        where = cascade_path(cfg.cascade)
        self.detector = cv2.CascadeClassifier(where)
        if self.detector.empty():
            raise ValueError(f"{where}: not a loadable OpenCV cascade")

    def boxes(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(x, y, w, h) of the detected faces in frame coordinates, largest first."""
        cv2 = self.cv2
        h, w = frame.shape[:2]
        scale = min(1.0, self.cfg.detect_width / w)
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        found = self.detector.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.cfg.min_face, self.cfg.min_face)
        )
        out = [tuple(int(round(v / scale)) for v in box) for box in found]
        return sorted(out, key=lambda b: b[2] * b[3], reverse=True)

    def crop(self, frame: np.ndarray) -> np.ndarray | None:
        found = self.boxes(frame)
        if not found:
            return None
        x, y, w, h = found[0]
        m = self.cfg.face_margin
        H, W = frame.shape[:2]
        x0, y0 = max(0, int(x - m * w)), max(0, int(y - m * h))
        x1, y1 = min(W, int(x + w + m * w)), min(H, int(y + h + m * h))
        return np.ascontiguousarray(frame[y0:y1, x0:x1])


class VisionModelExtractor:
    """Face crops (or frames) of a video -> one backbone vector per crop -> [T, D]."""

    def __init__(self, cfg: VisualFeatureConfig):
        import torch

        cfg.validate()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoImageProcessor, AutoModel

        from meiju_ray.features.audio import hf_load_error, quiet_transformers

        quiet_transformers()
        where = os.path.expanduser(cfg.model)
        try:
            model = AutoModel.from_pretrained(where)
            self.processor = AutoImageProcessor.from_pretrained(where, backend="pil")
        except (OSError, ValueError) as exc:
            raise hf_load_error("visual model", cfg.model, exc) from None
        if hasattr(model, "vision_model"):  # CLIP / SigLIP style: keep the image tower only
            model = model.vision_model
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device).eval()
        self.cropper = FaceCropper(cfg) if cfg.crop == "face" else None
        self.dim = int(self.embed([np.zeros((64, 64, 3), np.uint8)]).shape[1])
        self.name = where

    def _pool(self, out):
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        mode = self.cfg.pooling
        if hidden.dim() == 4:  # CNN feature map (B, C, H, W)
            if mode == "cls":
                raise ValueError(f"visual model {self.cfg.model!r} is a CNN: it has no CLS token")
            if mode in ("auto", "pooler") and pooled is not None:
                return pooled.flatten(1)
            return hidden.mean(dim=(2, 3))
        if mode == "pooler":
            if pooled is None:
                raise ValueError(f"visual model {self.cfg.model!r} has no pooler output")
            return pooled.flatten(1)
        if mode == "mean":
            return hidden.mean(dim=1)
        return hidden[:, 0]  # auto / cls

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, D) float32, one row per RGB crop."""
        import torch

        rows = []
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.cfg.dtype == "float16" and self.device.type == "cuda"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            for start in range(0, len(crops), self.cfg.batch_size):
                batch = crops[start : start + self.cfg.batch_size]
                inputs = self.processor(images=batch, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device)
                rows.append(self._pool(self.model(pixel_values=pixels)).float().cpu().numpy())
        return np.concatenate(rows).astype(np.float32)

    def crops(self, path: str | os.PathLike) -> list[np.ndarray]:
        out = []
        for frame in iter_frames(path, self.cfg.fps, self.cfg.max_frames):
            crop = frame if self.cropper is None else self.cropper.crop(frame)
            if crop is not None and crop.size:
                out.append(crop)
        return out

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        crops = self.crops(path)
        if not crops:  # no face in any sampled frame: the official zeros [1, D]
            return np.zeros((1, self.dim), np.float32)
        return np.nan_to_num(self.embed(crops))


def load_visual_extractor(cfg: VisualFeatureConfig) -> VisionModelExtractor:
    return VisionModelExtractor(cfg)
