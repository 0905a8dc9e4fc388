"""Real test clips and tiny real `transformers` models, built on the fly (nothing downloaded).

- speech: synthesised with espeak-ng (the Debian package; .ci/run installs it)
- pictures: scikit-image's bundled photographs: `astronaut` has a frontal face, `coffee` none
- clips: encoded with PyAV (MPEG-4 video + AAC audio in .mp4)
- models: random Wav2Vec2 / ViT / Whisper configs saved with save_pretrained, with their feature
  extractor / image processor / tokenizer, so the real loading code runs on them
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest

SIZE = 256  # the astronaut's face is ~53 px at this size (the detector's minimum is 40)
# what the clips say (the release test's transcripts; the extractor benchmark's speech)
SENTENCES = [
    "I love this kitchen.",
    "Could you please pass the salt?",
    "What a day, thank you so much.",
    "You did it, I am so happy for you.",
]


def need_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    return exe


def speech(text: str, voice: str = "en") -> tuple[np.ndarray, int]:
    """(int16 mono samples, sample rate) of `text` spoken by espeak-ng."""
    exe = need_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", "190", "-w", str(wav), text], check=True)
        with wave.open(str(wav)) as fh:
            rate = fh.getframerate()
            samples = np.frombuffer(fh.readframes(fh.getnframes()), dtype=np.int16)
    return samples.copy(), rate


def picture(name: str = "astronaut") -> np.ndarray:
    import cv2
    from skimage import data

    img = getattr(data, name)()
    return cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def write_clip(
    path: Path,
    image: np.ndarray | None,
    audio: tuple[np.ndarray, int] | None,
    seconds: float | None = None,
    fps: int = 10,
    frames: int | None = None,
) -> Path:
    """A clip with `image` as every video frame and `audio` as its sound (either may be None);
    the container follows the suffix. frames=0 writes a video stream with no frames (use .mkv:
    the mp4 muxer drops an empty track)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    if seconds is None:
        seconds = len(audio[0]) / audio[1] if audio is not None else 1.0
    with av.open(str(path), "w") as out:
        vs = None
        if image is not None:
            vs = out.add_stream("mpeg4", rate=fps)
            vs.width, vs.height, vs.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        if audio is not None:
            samples, rate = audio
            aus = out.add_stream("aac", rate=rate)
            aus.layout = "mono"
        if vs is not None:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for _ in range(max(1, int(round(seconds * fps))) if frames is None else frames):
                out.mux(vs.encode(frame))  # mux takes the encoder's list of packets
            out.mux(vs.encode())  # flush
        if audio is not None:
            step = 1024
            for start in range(0, len(samples), step):
                chunk = np.ascontiguousarray(samples[start : start + step][None, :])
                af = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                af.sample_rate, af.pts = rate, start
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return path


# ---- tiny models -------------------------------------------------------------------------------


def tiny_wav2vec2(out: Path) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8, 8, 8, 8, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=8,
    )
    Wav2Vec2Model(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(out)
    return out


def tiny_vit(out: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config).save_pretrained(out)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|zh|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]


def tiny_whisper(out: Path) -> Path:
    """A random multilingual Whisper (en, zh) with a byte-level BPE tokenizer of 256 bytes."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for tok in WHISPER_SPECIALS:
        vocab[tok] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        max_target_positions=32,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        lang_to_id={"<|en|>": vocab["<|en|>"], "<|zh|>": vocab["<|zh|>"]},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        is_multilingual=True,
        max_length=32,
    )
    model.save_pretrained(out)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    ).save_pretrained(out)
    return out


BERT_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "i",
    "love",
    "this",
    "kitchen",
    "you",
    "please",
    "pass",
    "the",
    "salt",
    "what",
    "a",
    "day",
    "thank",
    "so",
    "much",
    ".",
    "?",
]


def tiny_bert(out: Path) -> Path:
    """A random 4-layer BERT with a 22-word WordPiece vocabulary (the text extractor's model)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(out)).save_pretrained(str(out))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(BERT_VOCAB),
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    return out
