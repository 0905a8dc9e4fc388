"""Tests of the synthetic MEIJU Track 1 world generator (meiju_ray.data.synth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meiju_ray.data.synth import ModalitySpec, joint_table, write_world
from meiju_ray.labels import EMOTIONS, INTENTS

# Small dims keep the tests fast; lengths still vary per utterance and modality.
SMALL = (
    ModalitySpec("A", "wav2vec", 32, 8, 60, 20),
    ModalitySpec("V", "ResNet-50", 24, 1, 30, 8),
    ModalitySpec("L", "RoBERTa", 48, 3, 20, 8),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "world"
    summary = write_world(out, seed=3, scale=0.02, unlabeled=40, modalities=SMALL)
    return out, summary


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_medium") / "world"
    write_world(out, seed=1, scale=0.3, unlabeled=1, modalities=SMALL)
    return out


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def _labelled(out: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return ids, emotion ids, intent ids of a list file (hidden true labels for Testing)."""
    if split == "Testing":
        rows = [line.split() for line in _lines(out / "hidden" / "Testing_labels.txt")]
        ids = [r[0] for r in rows]
    else:
        rows = [line.split() for line in _lines(out / "Annotation" / f"{split}_files.txt")]
        ids = [r[0].removesuffix(".mp4") for r in rows]
    emo = np.array([EMOTIONS.index(r[1]) for r in rows])
    intent = np.array([INTENTS.index(r[2]) for r in rows])
    return ids, emo, intent


def _pooled(out: Path, ids: list[str], top: str = "Annotation") -> np.ndarray:
    """Mean+max pool every modality and concatenate: [N, 2 * sum(D)]."""
    feats = []
    for m in SMALL:
        rows = [np.load(out / top / "features" / m.folder / f"{u}.npy") for u in ids]
        feats.append(np.stack([np.concatenate([x.mean(0), x.max(0)]) for x in rows]))
    return np.concatenate(feats, axis=1)


def test_layout(world: tuple[Path, dict]) -> None:
    out, summary = world
    sizes = summary["sizes"]
    assert sizes == {"Training": 46, "Validation": 14, "Testing": 14, "NoAnnotation": 40}
    assert summary["dims"] == {"A": 32, "V": 24, "L": 48}
    assert summary["path"] == str(out)
    meta = json.loads((out / "world.json").read_text())
    assert meta["sizes"] == sizes and meta["seed"] == 3 and meta["label_noise"] == 0.1
    assert [m["folder"] for m in meta["modalities"]] == ["wav2vec", "ResNet-50", "RoBERTa"]
    assert not list(out.parent.glob("world.tmp-*"))

    listed: dict[str, list[str]] = {}
    for split in ("Training", "Validation"):
        lines = _lines(out / "Annotation" / f"{split}_files.txt")
        assert len(lines) == sizes[split]
        for k, line in enumerate(lines, 1):
            uid, emo, intent = line.split(" ")
            assert uid == f"Track1_{split}_{k:05d}.mp4"
            assert emo in EMOTIONS and intent in INTENTS
        listed[split] = [line.split()[0][:-4] for line in lines]
    for split, path in (
        ("Testing", out / "Annotation" / "Testing_files.txt"),
        ("NoAnnotation", out / "NoAnnotation" / "NoAnnotation_files.txt"),
    ):
        lines = _lines(path)
        assert lines == [f"Track1_{split}_{k:05d}.mp4" for k in range(1, sizes[split] + 1)]
        hidden = [line.split(" ") for line in _lines(out / "hidden" / f"{split}_labels.txt")]
        assert [h[0] for h in hidden] == [line[:-4] for line in lines]
        assert all(len(h) == 3 and h[1] in EMOTIONS and h[2] in INTENTS for h in hidden)
        listed[split] = [h[0] for h in hidden]

    for split, ids in listed.items():
        top = out / ("NoAnnotation" if split == "NoAnnotation" else "Annotation") / "features"
        for m in SMALL:
            files = sorted(p.stem for p in (top / m.folder).glob(f"Track1_{split}_*.npy"))
            assert files == ids
            lens = set()
            for uid in ids:
                x = np.load(top / m.folder / f"{uid}.npy")
                assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == m.dim
                assert m.min_len <= x.shape[0] <= m.max_len
                assert np.isfinite(x).all()
                lens.add(x.shape[0])
            assert len(lens) > 1, f"{split}/{m.name} lengths do not vary"


def test_deterministic(tmp_path: Path, world: tuple[Path, dict]) -> None:
    out, _ = world
    same = write_world(tmp_path / "same", seed=3, scale=0.02, unlabeled=40, modalities=SMALL)
    other = write_world(tmp_path / "other", seed=4, scale=0.02, unlabeled=40, modalities=SMALL)
    rels = [
        "Annotation/Training_files.txt",
        "hidden/NoAnnotation_labels.txt",
        "world.json",
        "Annotation/features/wav2vec/Track1_Validation_00002.npy",
        "NoAnnotation/features/RoBERTa/Track1_NoAnnotation_00007.npy",
    ]
    for rel in rels:
        assert (out / rel).read_bytes() == (Path(same["path"]) / rel).read_bytes(), rel
    for rel in rels[3:]:
        assert (out / rel).read_bytes() != (Path(other["path"]) / rel).read_bytes(), rel


def test_no_face_rows_are_single_zero_frames(tmp_path: Path) -> None:
    spec = (ModalitySpec("V", "ResNet-50", 4, 2, 5, 3),)
    write_world(tmp_path / "w", seed=0, scale=0.02, unlabeled=300, modalities=spec)
    folder = tmp_path / "w" / "NoAnnotation" / "features" / "ResNet-50"
    arrays = [np.load(p) for p in folder.iterdir()]
    zero = [x for x in arrays if x.shape[0] == 1]  # min_len is 2, so T=1 means "no face"
    assert 0 < len(zero) < 0.05 * len(arrays)
    assert all(not x.any() for x in zero)


def test_learnable_intent_easier(medium: Path) -> None:
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    tr_ids, tr_emo, tr_int = _labelled(medium, "Training")
    # Validation (noisy written labels) + Testing (true hidden labels): more rows, steadier F1.
    va_ids, va_emo, va_int = _labelled(medium, "Validation")
    te_ids, te_emo, te_int = _labelled(medium, "Testing")
    scaler = StandardScaler().fit(x_tr := _pooled(medium, tr_ids))
    x_tr, x_ev = scaler.transform(x_tr), scaler.transform(_pooled(medium, va_ids + te_ids))
    scores = {}
    for task, y_tr, y_ev in (
        ("emotion", tr_emo, np.r_[va_emo, te_emo]),
        ("intent", tr_int, np.r_[va_int, te_int]),
    ):
        pred = LogisticRegression(C=0.05, max_iter=2000).fit(x_tr, y_tr).predict(x_ev)
        majority = np.full_like(y_ev, np.bincount(y_tr).argmax())
        scores[task] = f1_score(y_ev, pred, average="weighted")
        assert scores[task] > f1_score(y_ev, majority, average="weighted") + 0.15, (task, scores)
        assert scores[task] < 0.95, (task, scores)  # not trivial
    assert scores["intent"] > scores["emotion"], scores


def test_emotion_intent_coupling(medium: Path) -> None:
    _, emo, intent = _labelled(medium, "Training")
    joint = np.zeros((len(EMOTIONS), len(INTENTS)))
    np.add.at(joint, (emo, intent), 1)
    p = joint / joint.sum()
    indep = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / indep[nz])).sum())
    assert mi > 0.3, mi
    assert joint_table().shape == (7, 8) and np.isclose(joint_table().sum(), 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": 0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"unlabeled": -5}, "unlabeled"),
        ({"label_noise": 1.0}, "label_noise"),
        ({"label_noise": -0.1}, "label_noise"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    out = tmp_path / "w"
    with pytest.raises(ValueError, match=match):
        write_world(out, modalities=SMALL, **kwargs)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("x\n")
    with pytest.raises(ValueError, match="refusing to write into non-empty directory"):
        write_world(out, scale=0.02, unlabeled=2, modalities=SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_empty_existing_dir_ok_and_progress(tmp_path: Path) -> None:
    out = tmp_path / "w"
    out.mkdir()
    messages: list[str] = []
    spec = (ModalitySpec("L", "RoBERTa", 4, 1, 3, 2),)
    summary = write_world(
        out, scale=0.02, unlabeled=1000, modalities=spec, progress=messages.append
    )
    assert summary["sizes"]["NoAnnotation"] == 1000
    assert any("1000/" in m for m in messages)
    assert (out / "world.json").is_file()
