"""Joint emotion + intent model: modality encoders -> fusion -> cross-task interaction -> heads.

Imports only torch. Every encoder is mask-aware: padded frames never change an output (the
baseline's max-pool over padding is a known bug we do not repeat).

Shapes: B batch, T frames, D input dim, H = hidden, M = number of modalities.
    encoder:      (B, T, D) + mask (B, T)  -> (B, H)
    fusion:       (B, M, H)                -> (B, M, H)          one token per modality
    interaction:  Q (B, M, H), K (B, M, H) -> (B, M, H)          Q attends to the other task
    heads:        (B, M*H)                 -> logits (B, C)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meiju_ray.config import ExperimentConfig, ModalityConfig, ModelConfig

TASKS = ("emotion", "intent")
# the official baseline encodes audio and visual frames with an LSTM, text with a TextCNN
BASELINE_ENCODERS = {"A": "lstm", "V": "lstm", "L": "textcnn"}


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, H), mask (B, T) -> (B, H): max over real frames only."""
    return x.masked_fill(~mask[..., None], float("-inf")).max(dim=1).values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class PoolEncoder(nn.Module):
    """Per-frame MLP, then masked mean + max pooling: cheap and strong on pre-extracted features."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.frame(x)  # (B, T, H)
        return self.out(torch.cat([masked_mean(h, mask), masked_max(h, mask)], dim=-1))


class AttnEncoder(nn.Module):
    """Frame projection + one self-attention layer with a key padding mask, then mean + max
    pooling."""

    def __init__(self, dim: int, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout, batch_first=True
        )
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.proj(x), src_key_padding_mask=~mask)
        return self.out(torch.cat([masked_mean(h, mask), masked_max(h, mask)], dim=-1))


class LSTMEncoder(nn.Module):
    """Baseline LSTMEncoder(embd_method=maxpool), but max-pooled over real frames only.

    The LSTM is unidirectional and padding only follows the real frames, so its outputs on real
    frames do not depend on the padding: running it over the padded batch and masking the max gives
    exactly what packed sequences give. Which is faster depends on the device: on CPU packing costs
    more than the few padded steps a length-bucketed batch has (see BENCHMARKS.md); cuDNN's packed
    kernels skip the padded steps cheaply. `packed=None` picks by device."""

    def __init__(self, dim: int, hidden: int, packed: bool | None = None):
        super().__init__()
        self.rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.packed = packed

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        packed = self.packed if self.packed is not None else x.is_cuda
        if not packed:
            h, _ = self.rnn(x)  # (B, T, H); padded steps computed, then masked out
            return masked_max(h, mask)
        lengths = mask.sum(dim=1).cpu()
        seqs = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(seqs)  # no compute on padded steps
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return masked_max(h, mask)


class TextCNNEncoder(nn.Module):
    """Baseline TextCNN (kernels 2, 3, 4 over time, 128 maps each, max-over-time, dropout 0.5).

    Max-over-time uses only windows that lie inside the real frames; a sequence shorter than the
    kernel is treated as zero-padded to the kernel size, whatever the batch padding.
    """

    KERNELS = (2, 3, 4)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, hidden, k) for k in self.KERNELS)
        self.out = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(hidden * len(self.KERNELS), hidden), nn.ReLU()
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask[..., None].to(x.dtype)
        lengths = mask.sum(dim=1)  # (B,)
        if x.shape[1] < max(self.KERNELS):
            x = F.pad(x, (0, 0, 0, max(self.KERNELS) - x.shape[1]))
        xt = x.transpose(1, 2)  # (B, D, T)
        pooled = []
        for k, conv in zip(self.KERNELS, self.convs):
            h = F.relu(conv(xt)).transpose(1, 2)  # (B, T - k + 1, H)
            starts = torch.arange(h.shape[1], device=x.device)
            valid = starts[None, :] + k <= torch.clamp(lengths, min=k)[:, None]
            pooled.append(masked_max(h, valid))
        return self.out(torch.cat(pooled, dim=-1))


def build_encoder(kind: str, dim: int, cfg: ModelConfig) -> nn.Module:
    if kind == "pool":
        return PoolEncoder(dim, cfg.hidden, cfg.dropout)
    if kind == "attn":
        return AttnEncoder(dim, cfg.hidden, cfg.fusion_heads, cfg.dropout)
    if kind == "lstm":
        return LSTMEncoder(dim, cfg.hidden)
    if kind == "textcnn":
        return TextCNNEncoder(dim, cfg.hidden)
    raise ValueError(f"unknown encoder {kind!r}")


def encoder_kind(modality: ModalityConfig, cfg: ModelConfig) -> str:
    if modality.encoder:
        return modality.encoder
    if cfg.preset == "baseline":
        return BASELINE_ENCODERS.get(modality.name, cfg.encoder)
    return cfg.encoder


class Classifier(nn.Module):
    """Baseline FcClassifier: Linear-ReLU-Dropout per hidden layer, then Linear to logits."""

    def __init__(self, dim: int, layers: list[int], n_out: int, dropout: float):
        super().__init__()
        mods: list[nn.Module] = []
        for width in layers:
            mods += [nn.Linear(dim, width), nn.ReLU(), nn.Dropout(dropout)]
            dim = width
        mods.append(nn.Linear(dim, n_out))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Interaction(nn.Module):
    """Baseline InteractModule with its own head count: Q attends to K (the other task).

    inter = MHA1(Q, K, K); hence = MHA2(Q, inter, inter)
    gate:  out = Q + hence * sigmoid(inter + hence)     (the baseline's "normal")
    plain: out = Q + hence
    """

    def __init__(self, hidden: int, heads: int, mode: str, dropout: float):
        super().__init__()
        self.mode = mode
        self.heads = heads
        self.mha1 = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.mha2 = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        inter, _ = self.mha1(q, k, k, need_weights=False)
        hence, _ = self.mha2(q, inter, inter, need_weights=False)
        if self.mode == "plain":
            return q + hence
        return q + hence * torch.sigmoid(inter + hence)


class Fusion(nn.Module):
    """Transformer over the M modality tokens (with an optional learned modality embedding)."""

    def __init__(self, n_modalities: int, cfg: ModelConfig):
        super().__init__()
        self.embed = (
            nn.Parameter(torch.zeros(n_modalities, cfg.hidden)) if cfg.modality_embedding else None
        )
        layer = nn.TransformerEncoderLayer(
            cfg.hidden,
            cfg.fusion_heads,
            cfg.fusion_ff,
            0.1 if cfg.preset == "baseline" else cfg.dropout,
            batch_first=True,
        )
        self.net = (
            nn.TransformerEncoder(layer, cfg.fusion_layers, enable_nested_tensor=False)
            if cfg.fusion_layers > 0
            else nn.Identity()
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            tokens = tokens + self.embed
        return self.net(tokens)


class JointModel(nn.Module):
    """forward(batch) -> {"emotion", "intent", "emotion_aux", "intent_aux", "intent_main"}
    logits."""

    def __init__(
        self, cfg: ModelConfig, modalities: list[ModalityConfig], n_emotion: int, n_intent: int
    ):
        super().__init__()
        self.cfg = cfg
        self.names = [m.name for m in modalities]
        self.shared = cfg.sharing == "shared"
        stacks = [""] if self.shared else ["emotion_", "intent_"]
        self.encoders = nn.ModuleDict(
            {
                f"{s}{m.name}": build_encoder(encoder_kind(m, cfg), m.dim, cfg)
                for s in stacks
                for m in modalities
            }
        )
        self.fusions = nn.ModuleDict(
            {s.rstrip("_") or "shared": Fusion(len(modalities), cfg) for s in stacks}
        )
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        width = len(modalities) * cfg.hidden
        if self.shared:
            # one encoder stack; a light per-task adapter lets the two token sets differ
            self.adapters = nn.ModuleDict(
                {t: nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU()) for t in TASKS}
            )
        if cfg.interaction != "none":
            self.emo_to_int = Interaction(cfg.hidden, cfg.heads_emo_to_int, cfg.interaction, 0.0)
            self.int_to_emo = Interaction(cfg.hidden, cfg.heads_int_to_emo, cfg.interaction, 0.0)
        sizes = {"emotion": n_emotion, "intent": n_intent}
        self.heads = nn.ModuleDict(
            {t: Classifier(width, cfg.classifier, sizes[t], cfg.dropout) for t in TASKS}
        )
        self.aux_heads = nn.ModuleDict(
            {t: Classifier(width, cfg.classifier, sizes[t], cfg.dropout) for t in TASKS}
        )
        if cfg.intent_fusion == "learned":
            self.intent_mix = nn.Parameter(
                torch.zeros(())
            )  # sigmoid(0) = 0.5: starts as the average

    def _encode(self, batch: dict[str, torch.Tensor], stack: str) -> torch.Tensor:
        feats = [
            self.encoders[f"{stack}{n}"](self.input_dropout(batch[n]), batch[f"{n}_mask"])
            for n in self.names
        ]
        return torch.stack(feats, dim=1)  # (B, M, H)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, W) fused embedding before the task adapters and heads, W = M*H (shared encoders)
        or 2*M*H (one stack per task): what self-supervised pre-training contrasts."""
        if self.shared:
            return self.fusions["shared"](self._encode(batch, "")).flatten(1)
        return torch.cat(
            [self.fusions[t](self._encode(batch, f"{t}_")).flatten(1) for t in TASKS], dim=1
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.shared:
            raw = self._encode(batch, "")
            fused = self.fusions["shared"](raw)
            tokens = {t: fused + self.adapters[t](fused) for t in TASKS}
            raws = {t: raw for t in TASKS}
        else:
            raws = {t: self._encode(batch, f"{t}_") for t in TASKS}
            tokens = {t: self.fusions[t](raws[t]) for t in TASKS}
        if self.cfg.interaction != "none":
            emo = self.emo_to_int(tokens["emotion"], tokens["intent"])  # emotion queries -> intent
            intent = self.int_to_emo(
                tokens["intent"], tokens["emotion"]
            )  # intent queries -> emotion
        else:
            emo, intent = tokens["emotion"], tokens["intent"]
        out = {
            "emotion": self.heads["emotion"](emo.flatten(1)),
            "intent_main": self.heads["intent"](intent.flatten(1)),
            "emotion_aux": self.aux_heads["emotion"](raws["emotion"].flatten(1)),
            "intent_aux": self.aux_heads["intent"](raws["intent"].flatten(1)),
        }
        if self.cfg.intent_fusion == "off":
            out["intent"] = out["intent_main"]
        elif self.cfg.intent_fusion == "average":
            out["intent"] = 0.5 * (out["intent_main"] + out["intent_aux"])
        else:
            w = torch.sigmoid(self.intent_mix)
            out["intent"] = w * out["intent_main"] + (1 - w) * out["intent_aux"]
        return out


def build_model(cfg: ExperimentConfig) -> JointModel:
    return JointModel(
        cfg.model, cfg.data.modalities, len(cfg.data.emotion_labels), len(cfg.data.intent_labels)
    )


# the weights self-supervised pre-training trains (train/pretrain.py): encoders and fusion; task
# adapters, cross-task attention and heads start fresh in every model that starts from them
BACKBONE_PREFIXES = ("encoders.", "fusions.")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
