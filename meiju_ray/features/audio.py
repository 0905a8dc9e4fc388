"""Frame-level acoustic features [T, D] from a video's audio (decoded to 16 kHz mono). No Ray here.

Two kinds (`AudioFeatureConfig.model`, see `parse_audio_spec`):
    opensmile[:SET]   openSMILE low-level descriptors from the `opensmile` wheel, no weights, fully
                      offline: egemaps (eGeMAPSv02, 25 LLDs, the default), compare (ComParE_2016,
                      65 LLDs) or any other `opensmile.FeatureSet` name that has LLDs; 10 ms hop
    <name or dir>     hidden states of a `transformers` speech encoder (wav2vec2 / HuBERT / WavLM:
                      anything AutoModel loads with an audio feature extractor), 20 ms frames;
                      `wav2vec2:`, `hubert:`, `wavlm:` or `hf:` in front are accepted and dropped.
                      A hub name comes from the HF cache (HF_HUB_OFFLINE=0 lets it download).
                      Layers, how they are combined, and the pooling over frames are options.
Audio longer than `chunk_seconds` goes through the model in consecutive windows whose frames are
concatenated (memory stays bounded on long clips).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meiju_ray.features.media import SAMPLE_RATE, decode_audio

OPENSMILE_SETS = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
HF_PREFIXES = ("hf:", "wav2vec2:", "hubert:", "wavlm:")
LAYER_REDUCE = ("sum", "mean", "concat")
POOLING = ("frames", "mean")
MIN_SAMPLES = 400  # the wav2vec2-family convolutional front end needs 25 ms


@dataclass
class AudioFeatureConfig:
    model: str = "opensmile"  # opensmile[:egemaps|compare|<FeatureSet>] | hub name | local dir
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, 0 = CNN out
    layer_reduce: str = "mean"  # sum | mean | concat (D x len(layers))
    pooling: str = "frames"  # frames [T, D] | mean [1, D]
    chunk_seconds: float = 30.0  # model window; longer audio is split
    device: str = "cpu"
    dtype: str = "float32"  # float16 runs the model in autocast on a GPU; output is float32

    def validate(self) -> None:
        if self.layer_reduce not in LAYER_REDUCE:
            raise ValueError(
                f"audio layer_reduce {self.layer_reduce!r} not in {list(LAYER_REDUCE)}"
            )
        if self.pooling not in POOLING:
            raise ValueError(f"audio pooling {self.pooling!r} not in {list(POOLING)}")
        if not self.layers:
            raise ValueError("audio layers: at least one hidden-state index is required")
        if self.chunk_seconds < 1:
            raise ValueError("audio chunk_seconds must be >= 1")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"audio dtype {self.dtype!r} is not float32 or float16")
        parse_audio_spec(self.model)


def parse_audio_spec(spec: str) -> tuple[str, str]:
    """("opensmile", FeatureSet name) or ("hf", hub name or local dir)."""
    spec = spec.strip()
    if not spec:
        raise ValueError("audio model: empty")
    if spec == "opensmile" or spec.startswith("opensmile:"):
        name = spec.partition(":")[2] or "egemaps"
        return "opensmile", OPENSMILE_SETS.get(name.lower(), name)
    for prefix in HF_PREFIXES:
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
            break
    return "hf", os.path.expanduser(spec)


def default_folder(cfg: AudioFeatureConfig) -> str:
    kind, name = parse_audio_spec(cfg.model)
    if kind == "opensmile":
        return f"opensmile-{name}-LLD"
    tag = {"sum": "", "mean": "-mean", "concat": "-cat"}[cfg.layer_reduce]
    pool = {"frames": "FRA", "mean": "UTT"}[cfg.pooling]
    return f"{Path(name.rstrip('/')).name or 'audio'}-{len(cfg.layers)}{tag}-{pool}"


def combine_layers(hidden_states, layers: list[int], reduce: str):
    """(B, T, H) per hidden state -> (B, T, D) from the chosen indices."""
    import torch

    n = len(hidden_states)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(
                f"layers: index {i} is out of range for a model with {n - 1} layers "
                f"(hidden_states has {n} entries, 0 = embeddings)"
            )
    chosen = [hidden_states[i].float() for i in layers]
    if reduce == "concat":
        return torch.cat(chosen, dim=-1)
    total = torch.stack(chosen).sum(dim=0)
    return total / len(chosen) if reduce == "mean" else total


def quiet_transformers() -> None:
    """No per-load progress bars in actor logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def hf_load_error(what: str, name: str, exc: Exception) -> ValueError:
    return ValueError(
        f"cannot load {what} {name!r}: {exc}".splitlines()[0]
        + " (a hub name is read from the HF cache; HF_HUB_OFFLINE=0 lets it download; "
        "or pass a local directory)"
    )


class OpenSmileExtractor:
    """openSMILE LLDs [T, D] at a 10 ms hop (no model weights)."""

    def __init__(self, cfg: AudioFeatureConfig):
        import opensmile

        _, name = parse_audio_spec(cfg.model)
        try:
            feature_set = opensmile.FeatureSet[name]
        except KeyError:
            known = ", ".join(list(OPENSMILE_SETS) + [f.name for f in opensmile.FeatureSet])
            raise ValueError(f"unknown openSMILE feature set {name!r} (known: {known})") from None
        try:
            self.smile = opensmile.Smile(
                feature_set=feature_set, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
            )
        except Exception as exc:  # opensmile raises plain errors for unsupported set/level pairs
            raise ValueError(f"openSMILE {name}: no low-level descriptors ({exc})") from None
        self.cfg = cfg
        self.dim = len(self.smile.feature_names)
        self.name = name

    def features(self, wav: np.ndarray) -> np.ndarray:
        frame = self.smile.process_signal(np.asarray(wav, np.float32), SAMPLE_RATE)
        arr = np.nan_to_num(frame.to_numpy(dtype=np.float32))
        if arr.shape[0] == 0:  # shorter than one analysis window
            arr = np.zeros((1, self.dim), np.float32)
        if self.cfg.pooling == "mean":
            arr = arr.mean(axis=0, keepdims=True)
        return arr

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        return self.features(decode_audio(path))


class SpeechModelExtractor:
    """Hidden states of a transformers speech encoder (wav2vec2 / HuBERT / WavLM) -> [T, D]."""

    def __init__(self, cfg: AudioFeatureConfig):
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

        quiet_transformers()
        _, where = parse_audio_spec(cfg.model)
        try:
            model = AutoModel.from_pretrained(where)
        except (OSError, ValueError) as exc:
            raise hf_load_error("audio model", cfg.model, exc) from None
        try:
            self.processor = AutoFeatureExtractor.from_pretrained(where)
        except (OSError, ValueError):  # e.g. HuBERT checkpoints that ship no preprocessor file
            self.processor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE)
        if getattr(self.processor, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise ValueError(
                f"audio model {cfg.model!r} expects {self.processor.sampling_rate} Hz audio; "
                f"the extractor decodes at {SAMPLE_RATE} Hz"
            )
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device).eval()
        hidden = int(model.config.hidden_size)
        self.dim = hidden * len(cfg.layers) if cfg.layer_reduce == "concat" else hidden
        self.name = where

    def features(self, wav: np.ndarray) -> np.ndarray:
        import torch

        wav = np.asarray(wav, np.float32)
        if wav.size < MIN_SAMPLES:
            wav = np.pad(wav, (0, MIN_SAMPLES - wav.size))
        window = int(self.cfg.chunk_seconds * SAMPLE_RATE)
        parts = []
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.cfg.dtype == "float16" and self.device.type == "cuda"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            for start in range(0, wav.size, window):
                chunk = wav[start : start + window]
                if chunk.size < MIN_SAMPLES:  # a sliver after the last full window
                    if parts:
                        break
                    chunk = np.pad(chunk, (0, MIN_SAMPLES - chunk.size))
                inputs = self.processor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt")
                values = inputs["input_values"].to(self.device)
                hidden = self.model(values, output_hidden_states=True).hidden_states
                feats = combine_layers(hidden, self.cfg.layers, self.cfg.layer_reduce)
                parts.append(feats[0].cpu().numpy().astype(np.float32))
        arr = np.concatenate(parts)
        if self.cfg.pooling == "mean":
            arr = arr.mean(axis=0, keepdims=True)
        return np.nan_to_num(arr)

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        return self.features(decode_audio(path))


def load_audio_extractor(cfg: AudioFeatureConfig) -> OpenSmileExtractor | SpeechModelExtractor:
    cfg.validate()
    kind, _ = parse_audio_spec(cfg.model)
    return OpenSmileExtractor(cfg) if kind == "opensmile" else SpeechModelExtractor(cfg)
