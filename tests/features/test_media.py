"""PyAV decoding, openSMILE LLDs and Haar face crops on real clips (espeak-ng speech, a packaged
photograph). No Ray, no model weights."""

from __future__ import annotations

import numpy as np
import pytest

from meiju_ray.features import media
from meiju_ray.features.audio import AudioFeatureConfig, OpenSmileExtractor, parse_audio_spec
from meiju_ray.features.extractors import Extractor, extract_one
from meiju_ray.features.visual import FaceCropper, VisualFeatureConfig
from tests import clips


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    sp = clips.speech("I really love this kitchen, it smells wonderful today.")
    face, coffee = clips.picture("astronaut"), clips.picture("coffee")
    paths = {
        "face": clips.write_clip(out / "face.mp4", face, sp),
        "noface": clips.write_clip(out / "noface.mp4", coffee, sp),
        "silent": clips.write_clip(out / "silent.mp4", face, None, seconds=1.0),
        "audio_only": clips.write_clip(out / "audio_only.mp4", None, sp),
        "zero_frames": clips.write_clip(out / "zero_frames.mkv", face, sp, frames=0),
        "garbage": out / "garbage.mp4",
        "missing": out / "missing.mp4",
    }
    paths["garbage"].write_bytes(b"this is not a video" * 10)
    return paths, len(sp[0]) / sp[1]


def test_decode_audio_is_16k_mono_float(clip_dir):
    paths, seconds = clip_dir
    wav = media.decode_audio(paths["face"])
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size / media.SAMPLE_RATE - seconds) < 0.1  # 22.05 kHz speech -> 16 kHz
    assert 0.05 < np.abs(wav).max() <= 1.0  # speech, scaled to [-1, 1]


def test_frames_sampled_at_the_requested_rate(clip_dir):
    paths, seconds = clip_dir
    frames = media.sample_frames(paths["face"], fps=2.0)
    assert abs(len(frames) - seconds * 2) <= 1.5
    assert frames[0].shape == (clips.SIZE, clips.SIZE, 3) and frames[0].dtype == np.uint8
    assert len(media.sample_frames(paths["face"], fps=10.0)) > 2 * len(frames)
    assert len(media.sample_frames(paths["face"], fps=10.0, max_frames=3)) == 3


@pytest.mark.parametrize(
    "name, decode, kind",
    [
        ("silent", "audio", "no_audio"),
        ("audio_only", "video", "no_video"),
        ("zero_frames", "video", "no_frames"),
        ("garbage", "audio", "unreadable"),
        ("garbage", "video", "unreadable"),
        ("missing", "audio", "unreadable"),
    ],
)
def test_bad_input_is_a_media_error_naming_the_file(clip_dir, name, decode, kind):
    paths, _ = clip_dir
    with pytest.raises(media.MediaError) as err:
        if decode == "audio":
            media.decode_audio(paths[name])
        else:
            media.sample_frames(paths[name], fps=3)
    assert err.value.kind == kind and str(paths[name]) in str(err.value)


def test_find_videos_maps_stems_to_files(clip_dir, tmp_path):
    paths, _ = clip_dir
    found = media.find_videos(paths["face"].parent)
    assert found["face"] == paths["face"] and found["zero_frames"].suffix == ".mkv"
    assert media.find_videos(tmp_path / "nothing") == {}


def test_opensmile_llds_are_frame_level_and_see_the_speech(clip_dir):
    paths, seconds = clip_dir
    egemaps = OpenSmileExtractor(AudioFeatureConfig("opensmile"))
    feats = egemaps(paths["face"])
    assert egemaps.dim == 25 and feats.shape[1] == 25 and feats.dtype == np.float32
    assert abs(feats.shape[0] - seconds / 0.01) < 10  # 10 ms hop
    assert np.isfinite(feats).all()
    loud = egemaps.smile.feature_names.index("Loudness_sma3")
    quiet = egemaps.features(np.zeros(16000, np.float32))
    assert feats[:, loud].mean() > 10 * max(quiet[:, loud].mean(), 1e-6)
    compare = OpenSmileExtractor(AudioFeatureConfig("opensmile:compare", pooling="mean"))
    assert compare(paths["face"]).shape == (1, 65)


def test_audio_specs():
    assert parse_audio_spec("opensmile") == ("opensmile", "eGeMAPSv02")
    assert parse_audio_spec("opensmile:compare") == ("opensmile", "ComParE_2016")
    assert parse_audio_spec("wav2vec2:facebook/wav2vec2-base") == ("hf", "facebook/wav2vec2-base")
    assert parse_audio_spec("TencentGameMate/chinese-hubert-base")[0] == "hf"
    with pytest.raises(ValueError, match="unknown openSMILE feature set"):
        OpenSmileExtractor(AudioFeatureConfig("opensmile:nosuchset"))


def test_face_cropper_finds_the_astronaut_and_no_face_in_coffee(clip_dir):
    paths, _ = clip_dir
    cropper = FaceCropper(VisualFeatureConfig(model="unused"))
    frame = media.sample_frames(paths["face"], fps=1)[0]
    boxes = cropper.boxes(frame)
    assert boxes, "the Haar cascade finds the astronaut's face"
    x, y, w, h = boxes[0]
    # her face sits in the upper middle of the photograph (about x 0.34-0.55, y 0.12-0.33)
    assert 0.25 < (x + w / 2) / clips.SIZE < 0.6 and 0.1 < (y + h / 2) / clips.SIZE < 0.4
    crop = cropper.crop(frame)
    assert crop.shape[0] > h and crop.shape[1] > w  # the margin
    coffee = media.sample_frames(paths["noface"], fps=1)[0]
    assert cropper.crop(coffee) is None


def test_extract_one_reports_a_failure_without_raising(clip_dir):
    paths, _ = clip_dir
    smile = OpenSmileExtractor(AudioFeatureConfig("opensmile"))
    ex = Extractor("audio", smile, smile.dim, smile.name)
    ok = extract_one(ex, "face", str(paths["face"]))
    assert ok.value.shape[1] == 25 and not ok.error
    bad = extract_one(ex, "silent", str(paths["silent"]))
    assert bad.value is None and bad.error_kind == "no_audio" and bad.dim == 25
    assert str(paths["silent"]) in bad.error
