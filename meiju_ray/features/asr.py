"""Speech recognition for videos without a transcript (the NoAnnotation pool, and any video whose
subtitle is missing or empty), with a `transformers` Whisper model. No Ray here.

The official baseline transcribes the pool with Whisper `base` (docs/baseline.md §1.4): pass
`openai/whisper-base` (from the HF cache) or a local directory. Audio longer than 30 s is cut into
30 s windows (Whisper's input length) whose texts are joined.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass

import numpy as np

from meiju_ray.features.media import SAMPLE_RATE, decode_audio

WHISPER_SECONDS = 30.0
LANGUAGES = {"english": "en", "mandarin": "zh", "chinese": "zh"}


@dataclass
class AsrConfig:
    model: str = ""  # hub name (openai/whisper-base: the official choice) or a local directory
    language: str = ""  # en | zh | ... ; "" = Whisper detects it
    max_new_tokens: int = 128  # per 30 s window
    num_beams: int = 1
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        if not self.model:
            raise ValueError("ASR model: give a hub name (e.g. openai/whisper-base) or a directory")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("ASR max_new_tokens and num_beams must be >= 1")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"ASR dtype {self.dtype!r} is not float32 or float16")


def language_code(name: str) -> str:
    """'English' / 'Mandarin' (the release folder names) or a code -> a Whisper language code."""
    return LANGUAGES.get(name.strip().lower(), name.strip().lower())


class WhisperTranscriber:
    """One model load; `transcribe(wav)` / `__call__(path)` -> text."""

    def __init__(self, cfg: AsrConfig):
        import torch

        cfg.validate()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        from meiju_ray.features.audio import hf_load_error, quiet_transformers

        quiet_transformers()
        where = os.path.expanduser(cfg.model)
        try:
            self.processor = AutoProcessor.from_pretrained(where)
            model = AutoModelForSpeechSeq2Seq.from_pretrained(where)
        except (OSError, ValueError) as exc:
            raise hf_load_error("ASR model", cfg.model, exc) from None
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        half = cfg.dtype == "float16" and self.device.type == "cuda"
        self.model = (model.half() if half else model).to(self.device).eval()
        gen = self.model.generation_config
        self.multilingual = bool(getattr(gen, "lang_to_id", None))
        limit = int(getattr(model.config, "max_target_positions", 448))
        self.max_new_tokens = max(1, min(cfg.max_new_tokens, limit - 4))  # minus the prompt
        self.name = where

    def transcribe(self, wav: np.ndarray) -> str:
        import torch

        wav = np.asarray(wav, np.float32)
        window = int(WHISPER_SECONDS * SAMPLE_RATE)
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.cfg.num_beams}
        if self.multilingual:
            kwargs["task"] = "transcribe"
            if self.cfg.language:
                kwargs["language"] = self.cfg.language
        texts = []
        with torch.inference_mode():
            for start in range(0, max(1, wav.size), window):
                chunk = wav[start : start + window]
                feats = self.processor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt")
                features = feats["input_features"].to(self.device, self.model.dtype)
                ids = self.model.generate(features, **kwargs)
                texts.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        sep = "" if self.cfg.language in ("zh", "ja") else " "
        text = sep.join(t for t in texts if t)
        text = "".join(c for c in text if unicodedata.category(c)[0] != "C" or c in " \t\n")
        return " ".join(text.replace("\ufffd", "").split())  # one line, no control characters

    def __call__(self, path: str | os.PathLike) -> str:
        return self.transcribe(decode_audio(path))
