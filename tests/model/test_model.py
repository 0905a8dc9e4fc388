"""Model: output contract, mask-aware encoders, head split, presets, intent fusion, learning."""

from __future__ import annotations

import itertools

import pytest
import torch

from meiju_ray.config import ExperimentConfig, LossConfig
from meiju_ray.model.losses import joint_loss
from meiju_ray.model.network import (
    AttnEncoder,
    LSTMEncoder,
    PoolEncoder,
    TextCNNEncoder,
    build_model,
    encoder_kind,
)

torch.set_num_threads(1)

DIMS = {"A": 6, "V": 4, "L": 5}
ENCODERS = ("pool", "attn", "lstm", "textcnn")
ENCODER_CLASS = {
    "pool": PoolEncoder,
    "attn": AttnEncoder,
    "lstm": LSTMEncoder,
    "textcnn": TextCNNEncoder,
}
N_EMO, N_INT = 7, 8
OUTPUT_SIZES = {
    "emotion": N_EMO,
    "emotion_aux": N_EMO,
    "intent": N_INT,
    "intent_main": N_INT,
    "intent_aux": N_INT,
}


def make_cfg(mod_encoders: dict[str, str] | None = None, **model) -> ExperimentConfig:
    mods = [
        {"name": n, "folder": n.lower(), "dim": d, "encoder": (mod_encoders or {}).get(n, "")}
        for n, d in DIMS.items()
    ]
    values = {
        "hidden": 16,
        "fusion_heads": 2,
        "fusion_ff": 32,
        "heads_emo_to_int": 2,
        "heads_int_to_emo": 2,
        "classifier": [16],
        **model,
    }
    return ExperimentConfig.from_dict({"seed": 0, "data": {"modalities": mods}, "model": values})


def make_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(make_cfg(**kw))


def random_batch(
    lengths: list[dict[str, int]], seed: int = 0, garbage: float | None = None
) -> dict:
    """Hand-built batch: row b of modality M has lengths[b][M] real frames.

    The padding is zero or, when `garbage` is given, noise with that mean and scale."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for name, dim in DIMS.items():
        lens = torch.tensor([row[name] for row in lengths])
        t_max = int(lens.max())
        x = torch.randn(len(lengths), t_max, dim, generator=g)
        mask = torch.arange(t_max)[None, :] < lens[:, None]
        pad = (
            torch.zeros_like(x)
            if garbage is None
            else garbage * torch.randn(x.shape, generator=g) + garbage
        )
        batch[name] = torch.where(mask[..., None], x, pad)
        batch[f"{name}_mask"] = mask
    return batch


def row_alone(batch: dict, r: int) -> dict:
    """Row r of `batch`, cut to its own lengths (no padding at all)."""
    out = {}
    for name in DIMS:
        n = int(batch[f"{name}_mask"][r].sum())
        out[name] = batch[name][r : r + 1, :n].clone()
        out[f"{name}_mask"] = torch.ones(1, n, dtype=torch.bool)
    return out


def pad_next_to_long(
    alone: dict, long_len: int, r_first: bool, seed: int, garbage: float | None
) -> dict:
    """Put the single row of `alone` next to a long row, padded to `long_len` frames."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, dim in DIMS.items():
        x = alone[name][0]
        n = x.shape[0]
        fill = (
            torch.zeros(long_len - n, dim)
            if garbage is None
            else garbage * torch.randn(long_len - n, dim, generator=g) + garbage
        )
        padded = torch.cat([x, fill])
        other = torch.randn(long_len, dim, generator=g)
        mask = torch.zeros(2, long_len, dtype=torch.bool)
        rows = [padded, other] if r_first else [other, padded]
        mask[0 if r_first else 1, :n] = True
        mask[1 if r_first else 0, :] = True
        out[name] = torch.stack(rows)
        out[f"{name}_mask"] = mask
    return out


# ---- output contract -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder, sharing", list(itertools.product(ENCODERS, ("shared", "per_task")))
)
def test_output_keys_and_shapes(encoder, sharing):
    model = make_model(encoder=encoder, sharing=sharing)
    assert all(isinstance(m, ENCODER_CLASS[encoder]) for m in model.encoders.values())
    batch = random_batch(
        [{"A": 5, "V": 1, "L": 3}, {"A": 2, "V": 4, "L": 7}, {"A": 1, "V": 2, "L": 1}]
    )
    model.train()
    out = model(batch)
    assert set(out) == set(OUTPUT_SIZES)
    for key, size in OUTPUT_SIZES.items():
        assert out[key].shape == (3, size), key
        assert torch.isfinite(out[key]).all(), key
    # every parameter takes part in the loss (nothing dead for DDP)
    targets = {
        "emotion": torch.tensor([0, 3, 6]),
        "intent": torch.tensor([7, 1, 0]),
        "weight": torch.ones(3),
    }
    loss, _ = joint_loss(out, targets, LossConfig())
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


# ---- masking invariance --------------------------------------------------------------------------

SHORT_ROWS = [
    {"A": 1, "V": 1, "L": 1},
    {"A": 2, "V": 1, "L": 2},
    {"A": 3, "V": 2, "L": 3},
    {"A": 1, "V": 3, "L": 2},
    {"A": 5, "V": 4, "L": 6},
]


def check_invariance(model, garbage: float | None, long_len: int = 23, atol: float = 2e-5):
    model.eval()
    source = random_batch(SHORT_ROWS, seed=1)
    with torch.no_grad():
        for r in range(len(SHORT_ROWS)):
            alone = row_alone(source, r)
            ref = model(alone)
            for r_first in (True, False):
                padded = pad_next_to_long(alone, long_len, r_first, seed=10 + r, garbage=garbage)
                out = model(padded)
                i = 0 if r_first else 1
                for key in OUTPUT_SIZES:
                    torch.testing.assert_close(
                        out[key][i],
                        ref[key][0],
                        atol=atol,
                        rtol=1e-4,
                        msg=lambda m, r=r, key=key: f"row {SHORT_ROWS[r]} key {key}: {m}",
                    )


@pytest.mark.parametrize("sharing", ["shared", "per_task"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_invariance_zero_padding(encoder, sharing):
    check_invariance(make_model(encoder=encoder, sharing=sharing), garbage=None)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_invariance_garbage_padding(encoder):
    # every encoder must ignore padded frames whatever they hold (finite values)
    check_invariance(make_model(encoder=encoder), garbage=50.0)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_level_invariance_and_padding_sensitivity(encoder):
    """Direct encoder check, plus a control: changing a *real* frame does change the output."""
    torch.manual_seed(0)
    cfg = make_cfg(encoder=encoder)
    enc = build_model(cfg).encoders["A"].eval()
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 4, 7):
        x = torch.randn(1, n, DIMS["A"], generator=g)
        with torch.no_grad():
            ref = enc(x, torch.ones(1, n, dtype=torch.bool))
            long = torch.cat([x, 100 * torch.randn(1, 30 - n, DIMS["A"], generator=g)], dim=1)
            mask = torch.zeros(1, 30, dtype=torch.bool)
            mask[0, :n] = True
            torch.testing.assert_close(enc(long, mask), ref, atol=2e-5, rtol=1e-4)
            changed = x.clone()
            changed[0, n - 1] += 3.0
            assert not torch.allclose(
                enc(changed, torch.ones(1, n, dtype=torch.bool)), ref, atol=1e-4
            )
            # and the mask is what matters: unmasking the garbage does change the output
            assert not torch.allclose(
                enc(long, torch.ones(1, 30, dtype=torch.bool)), ref, atol=1e-4
            )


def test_lstm_padded_and_packed_paths_agree():
    """CPU runs the LSTM over padding and masks the max; GPU packs: same outputs and gradients."""
    torch.manual_seed(0)
    enc = LSTMEncoder(6, 5)
    lens = torch.tensor([7, 2, 5, 1])
    mask = torch.arange(7)[None, :] < lens[:, None]
    x = torch.where(
        mask[..., None], torch.randn(4, 7, 6), torch.full((4, 7, 6), 9.0)
    ).requires_grad_()
    outs, grads = [], []
    for packed in (False, True):
        enc.packed = packed
        x.grad = None
        out = enc(x, mask)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(x.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert (grads[0][~mask] == 0).all()  # padded frames never reach the output


def test_textcnn_matches_hand_computation():
    """Max-over-time over windows inside the real frames.

    T < kernel acts as zero-padded to the kernel."""
    torch.manual_seed(0)
    enc = build_model(make_cfg(encoder="textcnn")).encoders["L"].eval()
    g = torch.Generator().manual_seed(4)
    for n in (1, 2, 3, 4, 6):
        x = torch.randn(1, n, DIMS["L"], generator=g)
        pooled = []
        for k, conv in zip(enc.KERNELS, enc.convs):
            xk = torch.cat(
                [x, torch.zeros(1, max(0, k - n), DIMS["L"])], dim=1
            )  # zero-pad to the kernel
            windows = [
                torch.relu(conv(xk[:, s : s + k].transpose(1, 2)))[..., 0]  # (1, H) per window
                for s in range(xk.shape[1] - k + 1)
            ]
            pooled.append(torch.stack(windows).max(dim=0).values)
        expected = enc.out(torch.cat(pooled, dim=-1))
        with torch.no_grad():
            got = enc(x, torch.ones(1, n, dtype=torch.bool))
            padded = torch.cat([x, torch.randn(1, 9, DIMS["L"], generator=g)], dim=1)
            mask = torch.zeros(1, n + 9, dtype=torch.bool)
            mask[0, :n] = True
            got_padded = enc(padded, mask)
        torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_padded, expected.detach(), atol=1e-5, rtol=1e-5)


# ---- architecture knobs --------------------------------------------------------------------------


@pytest.mark.parametrize("emo_to_int, int_to_emo", [(4, 2), (2, 4), (1, 8)])
def test_interaction_head_split(emo_to_int, int_to_emo):
    model = make_model(heads_emo_to_int=emo_to_int, heads_int_to_emo=int_to_emo)
    for mha in (model.emo_to_int.mha1, model.emo_to_int.mha2):
        assert mha.num_heads == emo_to_int
    for mha in (model.int_to_emo.mha1, model.int_to_emo.mha2):
        assert mha.num_heads == int_to_emo
    assert model.emo_to_int.heads == emo_to_int and model.int_to_emo.heads == int_to_emo


def test_baseline_preset_encoders_and_per_task_stacks():
    cfg = make_cfg(preset="baseline", sharing="per_task", encoder="pool")
    assert [encoder_kind(m, cfg.model) for m in cfg.data.modalities] == ["lstm", "lstm", "textcnn"]
    model = build_model(cfg)
    assert set(model.encoders) == {f"{t}_{m}" for t in ("emotion", "intent") for m in "AVL"}
    assert len(model.encoders) == 6
    for t in ("emotion", "intent"):
        assert isinstance(model.encoders[f"{t}_A"], LSTMEncoder)
        assert isinstance(model.encoders[f"{t}_V"], LSTMEncoder)
        assert isinstance(model.encoders[f"{t}_L"], TextCNNEncoder)
    # separate stacks: no parameter is shared between the two tasks' encoders
    emo = {
        id(p) for k, e in model.encoders.items() if k.startswith("emotion_") for p in e.parameters()
    }
    intent = {
        id(p) for k, e in model.encoders.items() if k.startswith("intent_") for p in e.parameters()
    }
    assert emo and intent and not emo & intent
    assert set(model.fusions) == {"emotion", "intent"} and not hasattr(model, "adapters")
    out = model(random_batch([{"A": 2, "V": 1, "L": 5}, {"A": 4, "V": 3, "L": 1}]))
    assert out["emotion"].shape == (2, N_EMO) and out["intent"].shape == (2, N_INT)


def test_shared_stack_and_modality_override():
    model = build_model(make_cfg(sharing="shared", encoder="attn"))
    assert set(model.encoders) == {"A", "V", "L"} and set(model.fusions) == {"shared"}
    # a per-modality encoder wins over the preset and the model default
    cfg = make_cfg(mod_encoders={"A": "pool", "L": "lstm"}, preset="baseline", encoder="attn")
    assert [encoder_kind(m, cfg.model) for m in cfg.data.modalities] == ["pool", "lstm", "lstm"]
    plain = make_cfg(encoder="attn")
    assert [encoder_kind(m, plain.model) for m in plain.data.modalities] == ["attn"] * 3


def test_intent_fusion_modes():
    batch = random_batch([{"A": 3, "V": 2, "L": 4}, {"A": 1, "V": 1, "L": 1}])
    off = make_model(intent_fusion="off").eval()
    with torch.no_grad():
        out = off(batch)
    assert torch.equal(out["intent"], out["intent_main"]) and not hasattr(off, "intent_mix")
    assert not torch.allclose(out["intent_main"], out["intent_aux"])

    avg = make_model(intent_fusion="average").eval()
    with torch.no_grad():
        out = avg(batch)
    torch.testing.assert_close(out["intent"], (out["intent_main"] + out["intent_aux"]) / 2)
    assert not hasattr(avg, "intent_mix")

    learned = make_model(intent_fusion="learned").eval()
    assert "intent_mix" in dict(learned.named_parameters())
    with torch.no_grad():
        out = learned(batch)
        torch.testing.assert_close(
            out["intent"], (out["intent_main"] + out["intent_aux"]) / 2
        )  # starts at 0.5
        learned.intent_mix.fill_(2.0)
        out = learned(batch)
    w = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(out["intent"], w * out["intent_main"] + (1 - w) * out["intent_aux"])
    assert not torch.allclose(out["intent"], (out["intent_main"] + out["intent_aux"]) / 2)


def test_interaction_modes_compute_their_own_formula():
    """With the same weights, gate and plain differ exactly as their formulas say; none has no
    interaction modules at all."""
    from meiju_ray.model.network import Interaction

    assert not hasattr(make_model(interaction="none"), "emo_to_int")
    torch.manual_seed(0)
    gate = Interaction(16, 2, "gate", 0.0).eval()
    plain = Interaction(16, 2, "plain", 0.0).eval()
    plain.load_state_dict(gate.state_dict())
    q, k = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    with torch.no_grad():
        inter, _ = gate.mha1(q, k, k, need_weights=False)
        hence, _ = gate.mha2(q, inter, inter, need_weights=False)
        torch.testing.assert_close(plain(q, k), q + hence)
        torch.testing.assert_close(gate(q, k), q + hence * torch.sigmoid(inter + hence))
        assert not torch.allclose(gate(q, k), plain(q, k), atol=1e-3)
    for interaction in ("plain", "gate"):  # and the full model runs with each
        out = make_model(interaction=interaction).eval()(
            random_batch([{"A": 3, "V": 2, "L": 4}, {"A": 2, "V": 5, "L": 1}])
        )
        assert out["emotion"].shape == (2, N_EMO) and out["intent"].shape == (2, N_INT)


def test_rows_are_independent_in_eval():
    """A row's logits do not depend on which other rows share its batch."""
    model = make_model(encoder="attn").eval()
    batch = random_batch(
        [{"A": 3, "V": 2, "L": 4}, {"A": 2, "V": 5, "L": 1}, {"A": 6, "V": 1, "L": 2}], seed=5
    )
    with torch.no_grad():
        full = model(batch)
        for r in range(3):
            single = model(row_alone(batch, r))
            torch.testing.assert_close(
                full["emotion"][r], single["emotion"][0], atol=2e-5, rtol=1e-4
            )


# ---- learning ------------------------------------------------------------------------------------


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    cfg = make_cfg(
        hidden=32,
        fusion_heads=2,
        heads_emo_to_int=2,
        heads_int_to_emo=2,
        classifier=[32],
        dropout=0.0,
        input_dropout=0.0,
        encoder="pool",
    )
    model = build_model(cfg)
    g = torch.Generator().manual_seed(7)
    lengths = [
        {"A": int(a), "V": int(v), "L": int(lex)}
        for a, v, lex in torch.randint(1, 7, (16, 3), generator=g)
    ]
    batch = random_batch(lengths, seed=8)
    batch["emotion"] = torch.randint(0, N_EMO, (16,), generator=g)
    batch["intent"] = torch.randint(0, N_INT, (16,), generator=g)
    batch["weight"] = torch.ones(16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(100):
        loss, _ = joint_loss(model(batch), batch, cfg.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        final, _ = joint_loss(out, batch, cfg.loss)
    assert float(final) < 0.1 * losses[0], (losses[0], float(final))
    assert torch.equal(out["emotion"].argmax(1), batch["emotion"])
    assert torch.equal(out["intent"].argmax(1), batch["intent"])
