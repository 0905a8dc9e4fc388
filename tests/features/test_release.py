"""Reading the official release layout, and `extract_release` run in-process (openSMILE, no Ray):
lists, failures, zero fills for Testing, resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meiju_ray.data.layout import DataError
from meiju_ray.features.extractors import run_in_process
from meiju_ray.features.release import (
    ExtractPlan,
    extract_release,
    read_release,
    text_job_in_process,
)
from meiju_ray.features.text import TextFeatureConfig
from tests import clips


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_read_release_labels_subtitles_and_lists(tmp_path):
    root = tmp_path / "Track1" / "Mandarin"
    ann = root / "Annotation"
    for i in (1, 2, 3):
        _touch(ann / "Training" / f"Track1_Training_{i:05d}.mp4")
    _write(
        ann / "Training_transcription.csv",
        "\ufeffFileName,Subtitle,Emotion,Intent\n"
        "Track1_Training_00001.mp4,你好,Happy,Questioning\n"
        "Track1_Training_00002.mp4,,neutral,neutral\n",
    )
    _touch(ann / "Validation" / "Track1_Validation_00001.mp4")
    _write(
        ann / "Validation_transcription.csv", "FileName,Subtitle\nTrack1_Validation_00001.mp4,好\n"
    )
    _write(ann / "Validation_files.txt", "Track1_Validation_00001.mp4 sad consoling\n")
    _touch(ann / "Testing" / "Track1_Testing_00001.mp4")
    _write(ann / "Mandarin_Testing_files.csv", "FileName,Subtitle\nTrack1_Testing_00001.mp4,嗯\n")
    _touch(root / "NoAnnotation" / "Videos" / "NoAnnotation_00001.mp4")
    rel = read_release(root)
    assert rel.language == "Mandarin"
    by_id = {u.id: u for u in rel.utterances}
    t1, t2, t3 = (by_id[f"Track1_Training_{i:05d}"] for i in (1, 2, 3))
    assert (t1.text, t1.emotion, t1.intent) == ("你好", "happy", "questioning")
    assert t2.text == "" and t3.text is None and t3.emotion == ""  # a video with no CSV row
    assert t1.video.is_file()
    v = by_id["Track1_Validation_00001"]
    assert (v.text, v.emotion, v.intent) == ("好", "sad", "consoling")  # the list's labels
    assert by_id["Track1_Testing_00001"].text == "嗯"
    assert by_id["NoAnnotation_00001"].split == "NoAnnotation"
    assert rel.sources["Testing list"].endswith("Mandarin_Testing_files.csv")


def test_read_release_errors_name_the_file(tmp_path):
    root = tmp_path / "Track1" / "English"
    ann = root / "Annotation"
    _write(
        ann / "Training_transcription.csv",
        "FileName,Subtitle,Emotion,Intent\na.mp4,hi,glad,agreeing\n",
    )
    with pytest.raises(
        DataError, match=r"Training_transcription.csv:2: unknown emotion label 'glad'"
    ):
        read_release(root)
    _write(ann / "Training_transcription.csv", "FileName,Subtitle\na.mp4,hi\n")
    _touch(root / "NoAnnotation" / "a.mp4")
    with pytest.raises(DataError, match="'a' is in both Training and NoAnnotation"):
        read_release(root)
    with pytest.raises(DataError, match="pass one of"):
        read_release(tmp_path)
    _write(ann / "Training_transcription.csv", "Speaker,Subtitle\n")
    with pytest.raises(DataError, match="no FileName"):
        read_release(root)


def test_extract_release_in_process_reports_fills_and_resumes(tmp_path):
    root = tmp_path / "Track1" / "English"
    ann = root / "Annotation"
    sp = clips.speech("Thank you so much.")
    img = clips.picture("coffee")
    clips.write_clip(ann / "Training" / "tr1.mp4", img, sp, fps=5)
    clips.write_clip(ann / "Training" / "tr2.mp4", img, None, seconds=0.5, fps=5)  # no audio
    _write(
        ann / "Training_transcription.csv",
        "FileName,Subtitle,Emotion,Intent\ntr1.mp4,thanks,happy,agreeing\ntr2.mp4,hm,sad,neutral\n",
    )
    _write(ann / "Testing" / "te1.mp4", "garbage")
    clips.write_clip(root / "NoAnnotation" / "p1.mp4", img, sp, fps=5)
    out = tmp_path / "out"
    plan = ExtractPlan(audio={"model": "opensmile"}, text=False)
    summary = extract_release(root, out, plan, run_in_process)
    assert {(r["id"], r["kind"]) for r in summary["failed"]} == {
        ("tr2", "no_audio"),
        ("te1", "unreadable"),
    }
    assert summary["dropped"] == ["tr2"] and summary["listed"] == {
        "Training": 1,
        "Testing": 1,
        "NoAnnotation": 1,
    }
    assert (out / "Annotation" / "Training_files.txt").read_text() == "tr1 happy agreeing\n"
    folder = out / "Annotation" / "features" / "opensmile-eGeMAPSv02-LLD"
    assert np.load(folder / "tr1.npy").shape[1] == 25
    assert not (folder / "tr2.npy").exists()
    zero = np.load(folder / "te1.npy")
    assert zero.shape == (1, 25) and not zero.any()
    assert (out / "NoAnnotation" / "features" / "opensmile-eGeMAPSv02-LLD" / "p1.npy").is_file()
    assert set(summary["packed"]) == {"Training", "Testing", "NoAnnotation"}
    assert summary["no_transcript"] == 2  # te1, p1: no subtitle, no ASR
    # a re-run extracts only what failed (te1's zero fill is removed first, then filled again)
    stamp = (folder / "tr1.npy").stat().st_mtime_ns
    again = extract_release(root, out, plan, run_in_process)
    assert again["steps"]["A"]["reused"] == 2 and again["steps"]["A"]["videos"] == 2
    assert (folder / "tr1.npy").stat().st_mtime_ns == stamp
    assert json.loads((out / "extract_summary.json").read_text())["dropped"] == ["tr2"]
    # ASR fills the missing transcripts (and p1's text features follow); a later run without
    # --asr keeps them
    bert = TextFeatureConfig(str(clips.tiny_bert(tmp_path / "bert")))
    text_job = text_job_in_process(bert)
    texts = ExtractPlan(audio={"model": "opensmile"}, text=True)
    extract_release(root, out, texts, run_in_process, text_job, "bert-4-FRA")
    l_pool = out / "NoAnnotation" / "features" / "bert-4-FRA" / "p1.npy"
    assert not np.load(l_pool).any()  # no transcript yet: zeros [1, D]
    whisper = clips.tiny_whisper(tmp_path / "whisper")
    asr = ExtractPlan(audio={"model": "opensmile"}, asr={"model": str(whisper)}, text=True)
    heard = extract_release(root, out, asr, run_in_process, text_job, "bert-4-FRA")
    assert heard["steps"]["L"]["utterances"] == 1  # only p1, whose transcript changed
    assert heard["steps"]["asr"]["transcribed"] == 1 and heard["steps"]["asr"]["failed"] == 1
    cached = (out / "NoAnnotation" / "asr_transcription.csv").read_text().splitlines()
    assert cached[0] == "name,sentence" and cached[1].startswith("p1,")
    later = extract_release(root, out, plan, run_in_process)
    assert later["no_transcript"] == 1  # te1 only: p1's ASR text is reused
    assert heard["transcript_changed"] == 1 and later["transcript_changed"] == 0  # p1: "" -> ASR
    pool_csv = (out / "NoAnnotation" / "transcription.csv").read_text().splitlines()
    assert pool_csv[1] == cached[1]
    with pytest.raises(ValueError, match="is the release folder"):
        extract_release(root, root, plan, run_in_process)
