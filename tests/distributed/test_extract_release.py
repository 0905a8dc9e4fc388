"""End to end on real clips: a tiny Track 1 release (espeak-ng speech muxed with a packaged
photograph, three planted bad videos) -> `meiju-ray extract` (openSMILE, ViT face crops, Whisper
ASR, BERT text: tiny random models saved here) -> `meiju-ray pipeline` -> submission.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from meiju_ray.cli import main
from tests import clips

pytestmark = pytest.mark.ray

SENTENCES = clips.SENTENCES
EMOTIONS = ["happy", "neutral", "sad", "surprise"]
INTENTS = ["acknowledging", "questioning", "consoling", "encouraging"]


def _csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """<tmp>/Track1/English in the official layout: 8 Training, 4 Validation, 3 Testing, 4 pool
    videos. Planted: Training_00008 has no audio stream, Testing_00003 is not a video, the pool's
    NoAnnotation_00004 has no video stream, Validation_00004's subtitle is empty (ASR fills it)."""
    root = tmp_path_factory.mktemp("release") / "Track1" / "English"
    ann = root / "Annotation"
    speech = [clips.speech(s) for s in SENTENCES]
    faces = [clips.picture("astronaut"), clips.picture("coffee")]

    def clip(path, k, image=True, audio=True):
        image = faces[k % 2] if image else None
        clips.write_clip(path, image, speech[k % 4] if audio else None, fps=5)

    for split, n in (("Training", 8), ("Validation", 4)):
        rows = []
        for i in range(1, n + 1):
            utt = f"Track1_{split}_{i:05d}"
            clip(ann / split / f"{utt}.mp4", i, audio=not (split == "Training" and i == 8))
            text = "" if (split, i) == ("Validation", 4) else SENTENCES[i % 4]
            rows.append([f"{utt}.mp4", text, EMOTIONS[i % 4], INTENTS[i % 4]])
        _csv(
            ann / f"{split}_transcription.csv", ["FileName", "Subtitle", "Emotion", "Intent"], rows
        )
    tests = []
    for i in range(1, 4):
        utt = f"Track1_Testing_{i:05d}"
        if i == 3:
            (ann / "Testing" / f"{utt}.mp4").write_bytes(b"\x00 not a video \x00" * 64)
        else:
            clip(ann / "Testing" / f"{utt}.mp4", i)
        tests.append([f"{utt}.mp4"])
    _csv(ann / "English_Testing_files.csv", ["FileName"], tests)
    for i in range(1, 5):
        clip(root / "NoAnnotation" / f"NoAnnotation_{i:05d}.mp4", i, image=i != 4)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    return {
        "vit": clips.tiny_vit(out / "vit"),
        "whisper": clips.tiny_whisper(out / "whisper"),
        "bert": clips.tiny_bert(out / "bert"),
    }


def _extract(release, models, out):
    return main(
        [
            "-q",
            "extract",
            str(release),
            "--out",
            str(out),
            "--audio",
            "opensmile",
            "--visual",
            str(models["vit"]),
            "--visual-fps",
            "2",
            "--asr",
            str(models["whisper"]),
            "--text",
            str(models["bert"]),
            "--cpus-per-actor",
            "0.5",
        ]
    )


def test_release_to_submission(ray_cluster, release, models, tmp_path, capsys):
    out = tmp_path / "data"
    assert _extract(release, models, out) == 0
    summary = json.loads((out / "extract_summary.json").read_text())

    # every planted bad video is reported with its file, and nothing else failed
    failed = {(r["id"], r["modality"], r["kind"]) for r in summary["failed"]}
    assert failed == {
        ("Track1_Training_00008", "A", "no_audio"),
        ("Track1_Testing_00003", "A", "unreadable"),
        ("Track1_Testing_00003", "V", "unreadable"),
        ("Track1_Testing_00003", "asr", "unreadable"),
        ("NoAnnotation_00004", "V", "no_video"),
    }
    assert all(r["file"].endswith(f"{r['id']}.mp4") for r in summary["failed"])
    assert summary["failures_by_kind"]["A:no_audio"] == 1

    # lists: failed ids left out of Training and the pool; Testing keeps every id
    ann = out / "Annotation"
    training = (ann / "Training_files.txt").read_text().split("\n")
    assert len([x for x in training if x]) == 7 and "Track1_Training_00008" not in str(training)
    assert "Track1_Training_00001 neutral questioning" in training
    testing = (ann / "Testing_files.txt").read_text().split()
    assert testing == [f"Track1_Testing_{i:05d}" for i in range(1, 4)]
    pool = (out / "NoAnnotation" / "NoAnnotation_files.txt").read_text().split()
    assert pool == [f"NoAnnotation_{i:05d}" for i in range(1, 4)]

    # features [T, D] per modality; the garbage test video is zero-filled, not missing
    dims = {m["name"]: m["dim"] for m in summary["modalities"]}
    assert dims == {"A": 25, "V": 16, "L": 16}
    folders = {m["name"]: m["folder"] for m in summary["modalities"]}
    a = np.load(ann / "features" / folders["A"] / "Track1_Training_00001.npy")
    assert a.shape[1] == 25 and a.shape[0] > 100 and a.dtype == np.float32
    v_face = np.load(ann / "features" / folders["V"] / "Track1_Training_00002.npy")  # astronaut
    v_none = np.load(ann / "features" / folders["V"] / "Track1_Training_00001.npy")  # coffee
    assert v_face.shape[0] > 1 and np.abs(v_face).sum() > 0
    assert v_none.shape == (1, 16) and not v_none.any()  # no face: the official zeros
    for m in ("A", "V"):
        z = np.load(ann / "features" / folders[m] / "Track1_Testing_00003.npy")
        assert z.shape == (1, dims[m]) and not z.any()
    assert len(summary["zero_filled"]) == 2

    # transcripts: subtitles kept, ASR for the empty subtitle, the test list and the pool
    asr = {r["name"]: r["sentence"] for r in csv.DictReader(open(ann / "asr_transcription.csv"))}
    assert {"Track1_Validation_00004", "Track1_Testing_00001", "Track1_Testing_00002"} <= set(asr)
    texts = {r["name"]: r["sentence"] for r in csv.DictReader(open(ann / "transcription.csv"))}
    assert texts["Track1_Training_00001"] == SENTENCES[1]
    pool_texts = list(csv.DictReader(open(out / "NoAnnotation" / "transcription.csv")))
    assert [r["name"] for r in pool_texts] == [f"NoAnnotation_{i:05d}" for i in range(1, 5)]
    assert summary["steps"]["asr"]["videos"] == 8  # 1 empty subtitle + 3 test + 4 pool
    assert (out / "NoAnnotation" / "features" / folders["L"] / "NoAnnotation_00001.npy").is_file()

    # packed shards in the pipeline's cache
    assert set(summary["packed"]) == {"Training", "Validation", "Testing", "NoAnnotation"}
    packed = {k: v for k, v in summary["packed"].items()}
    assert all(
        (out / ".meiju_packed").joinpath(p.split("/")[-1], "manifest.json").is_file()
        for p in packed.values()
    )

    capsys.readouterr()

    # the pipeline on the extracted root, reading the packed shards
    run = tmp_path / "run"
    code = main(
        [
            "-q",
            "pipeline",
            "experiments/smoke.yaml",
            *summary["pipeline_overrides"],
            f"output_dir={run}",
            "tracking.enabled=false",
            "train.epochs=2",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(run / "submission.csv")))
    assert sorted(r["filename"] for r in rows) == testing
    assert all(r["emo_pred"] and r["int_pred"] for r in rows)
    for p in packed.values():  # the pipeline found its shards current: not re-packed
        assert (out / ".meiju_packed" / p.split("/")[-1] / "manifest.json").is_file()


def test_bad_release_is_one_line_exit_2(tmp_path, release, capsys):
    assert main(["extract", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "release folder not found" in capsys.readouterr().err
    assert main(["extract", str(release.parent.parent), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no Annotation/" in err and "Track1/English" in err
    assert main(["extract", str(release), "--out", str(release), "--text", "none"]) == 2
    assert "is the release folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    assert main(["extract", str(release), "--out", str(tmp_path / "busy"), "--text", "none"]) == 2
    assert "already holds other files" in capsys.readouterr().err


def test_two_actors_share_the_videos_and_load_their_model_once_each(ray_cluster, release):
    """An actor pool of 2: every video once, both actors working, one model load per actor, and
    the same features as one extractor in this process."""
    from meiju_ray.distributed.extract_media import run_media_job
    from meiju_ray.features.extractors import build_extractor, extract_one

    videos = sorted((release / "Annotation" / "Training").glob("*.mp4"))[:7]  # 8 has no audio
    # 28 rows in 28 blocks: more than one actor takes at a time, so neither can have them all
    items = [(f"{p.stem}-{k}", str(p)) for k in range(4) for p in videos]
    cfg = {"model": "opensmile"}
    got = []
    stats = run_media_job("audio", cfg, items, got.extend, actors=2, cpus_per_actor=0.5)

    assert sorted(r.id for r in got) == sorted(u for u, _ in items)
    assert stats["actors"] == 2 and stats["model_loads"] == 2
    assert len(stats["videos_per_worker"]) == 2 and min(stats["videos_per_worker"].values()) > 0
    assert sum(stats["videos_per_worker"].values()) == len(items)
    assert stats["videos_per_second_per_actor"] == pytest.approx(
        stats["videos_per_second"] / 2, abs=0.01
    )
    here = build_extractor("audio", cfg)
    for r in got[:: len(videos)]:
        want = extract_one(here, r.id, dict(items)[r.id]).value
        np.testing.assert_allclose(r.value, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_visual_job_on_a_gpu_actor_matches_the_cpu(ray_cluster, release, models):
    """--gpus-per-actor: the actor asks Ray for a GPU and runs the backbone on cuda."""
    from meiju_ray.distributed.extract_media import run_media_job
    from meiju_ray.features.extractors import build_extractor, extract_one

    videos = sorted((release / "Annotation" / "Training").glob("*.mp4"))[:4]
    items = [(p.stem, str(p)) for p in videos]
    cfg = {"model": str(models["vit"]), "fps": 2}
    got = []
    stats = run_media_job("visual", cfg, items, got.extend, gpus_per_actor=0.5)
    assert stats["gpus_per_actor"] == 0.5 and len(got) == len(items)
    cpu = build_extractor("visual", cfg)
    for r in got:
        want = extract_one(cpu, r.id, dict(items)[r.id]).value
        np.testing.assert_allclose(r.value, want, rtol=1e-3, atol=1e-4)
