"""The transformers extractors on real clips with tiny random models saved by the test: wav2vec2
hidden states, ViT / ResNet / CLIP-tower crops, Whisper ASR. No Ray."""

from __future__ import annotations

import numpy as np
import pytest

from meiju_ray.features import media
from meiju_ray.features.asr import AsrConfig, WhisperTranscriber, language_code
from meiju_ray.features.audio import AudioFeatureConfig, SpeechModelExtractor, default_folder
from meiju_ray.features.extractors import build_extractor, check_model_available
from meiju_ray.features.visual import VisionModelExtractor, VisualFeatureConfig
from tests import clips


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    sp = clips.speech("Could you please pass me the salt?")
    paths = {
        "face": clips.write_clip(out / "face.mp4", clips.picture("astronaut"), sp),
        "noface": clips.write_clip(out / "noface.mp4", clips.picture("coffee"), sp),
    }
    models = {
        "w2v": clips.tiny_wav2vec2(out / "w2v"),
        "vit": clips.tiny_vit(out / "vit"),
        "whisper": clips.tiny_whisper(out / "whisper"),
    }
    return paths, models, len(sp[0]) / sp[1]


def test_speech_model_frames_layers_and_pooling(assets):
    paths, models, seconds = assets
    wav = media.decode_audio(paths["face"])
    last = SpeechModelExtractor(AudioFeatureConfig(str(models["w2v"])))
    feats = last.features(wav)
    assert last.dim == 16 and feats.shape[1] == 16 and feats.dtype == np.float32
    assert abs(feats.shape[0] - seconds / 0.02) <= 3  # one frame per 20 ms
    both = SpeechModelExtractor(
        AudioFeatureConfig(f"wav2vec2:{models['w2v']}", layers=[-2, -1], layer_reduce="concat")
    )
    cat = both.features(wav)
    assert both.dim == 32 and cat.shape == (feats.shape[0], 32)
    np.testing.assert_allclose(cat[:, 16:], feats, rtol=1e-4, atol=1e-5)  # layer -1 is the tail
    pooled = SpeechModelExtractor(AudioFeatureConfig(str(models["w2v"]), pooling="mean"))
    np.testing.assert_allclose(pooled.features(wav), feats.mean(0, keepdims=True), atol=1e-5)
    windows = SpeechModelExtractor(AudioFeatureConfig(str(models["w2v"]), chunk_seconds=1))
    assert abs(windows.features(wav).shape[0] - feats.shape[0]) <= 3
    assert windows.features(np.zeros(100, np.float32)).shape == (1, 16)  # padded to 25 ms
    assert default_folder(both.cfg) == "w2v-2-cat-FRA"


def test_speech_model_layer_out_of_range(assets):
    paths, models, _ = assets
    ex = SpeechModelExtractor(AudioFeatureConfig(str(models["w2v"]), layers=[7]))
    with pytest.raises(ValueError, match="out of range"):
        ex.features(np.zeros(16000, np.float32))


def test_vit_on_face_crops_and_the_zero_row_without_a_face(assets):
    paths, models, seconds = assets
    vit = VisionModelExtractor(VisualFeatureConfig(str(models["vit"]), fps=2))
    n_frames = len(media.sample_frames(paths["face"], fps=2))
    feats = vit(paths["face"])
    assert vit.dim == 16 and feats.shape == (n_frames, 16) and np.abs(feats).sum() > 0
    none = vit(paths["noface"])  # no face in any frame: the official zeros [1, D]
    assert none.shape == (1, 16) and not none.any()
    frames = VisionModelExtractor(VisualFeatureConfig(str(models["vit"]), fps=2, crop="frame"))
    whole = frames(paths["noface"])
    assert whole.shape == (n_frames, 16) and np.abs(whole).sum() > 0
    # the face crop is not the whole frame: different pixels, different vectors
    assert not np.allclose(frames(paths["face"])[0], feats[0])


def test_resnet_and_clip_image_tower(tmp_path, assets):
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        ConvNextImageProcessorPil,
        ResNetConfig,
        ResNetModel,
    )

    paths, _, _ = assets
    torch.manual_seed(0)
    cnn = ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic")
    ResNetModel(cnn).save_pretrained(tmp_path / "resnet")
    ConvNextImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(tmp_path / "resnet")
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    clip = CLIPConfig(
        text_config={**tower, "num_attention_heads": 2, "vocab_size": 64},
        vision_config={**tower, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(clip).save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path / "clip")
    resnet = build_extractor("visual", {"model": str(tmp_path / "resnet"), "fps": 2})
    assert resnet.dim == 12 and resnet.fn(str(paths["face"])).shape[1] == 12  # pooled map
    with pytest.raises(ValueError, match="CNN"):
        build_extractor("visual", {"model": str(tmp_path / "resnet"), "pooling": "cls"})
    tower_only = build_extractor("visual", {"model": str(tmp_path / "clip"), "fps": 2})
    assert tower_only.dim == 16 and not hasattr(tower_only.fn.model, "text_model")


def test_whisper_transcribes_each_video_to_one_line(assets):
    paths, models, _ = assets
    asr = WhisperTranscriber(AsrConfig(str(models["whisper"]), language=language_code("English")))
    assert asr.multilingual and asr.max_new_tokens == 28  # 32 positions minus the prompt
    text = asr(paths["face"])
    assert isinstance(text, str) and "\n" not in text
    assert all(ord(c) >= 32 for c in text)
    long = asr.transcribe(np.zeros(16000 * 31, np.float32))  # two 30 s windows
    assert isinstance(long, str)
    assert language_code("Mandarin") == "zh"


def test_a_missing_model_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="directory not found"):
        check_model_available(str(tmp_path / "nope"), "audio model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        check_model_available(str(tmp_path / "empty"), "visual model")
    with pytest.raises(ValueError, match="not in the HF cache"):
        check_model_available("nobody-here/no-such-model-xyz", "ASR model")
    with pytest.raises(ValueError, match="cannot load audio model"):
        SpeechModelExtractor(AudioFeatureConfig(str(tmp_path / "empty")))
