"""The GPU path (pinned host memory, non-blocking copies, AMP with a grad scaler) is correct by
construction: on cpu it is a no-op (tested here on every machine); on cuda it is tested when a
GPU exists."""

from __future__ import annotations

import math

import pytest
import torch

from meiju_ray.data.batching import iter_batches, to_device
from meiju_ray.data.packing import load_split
from meiju_ray.model.network import build_model
from meiju_ray.train import engine

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _fit_once(
    cfg, split, device: torch.device, amp: bool, seed: int = 0, epochs: int = 1, batch_size: int = 4
):
    engine.seed_everything(seed)
    model = build_model(cfg).to(device)
    before = _params(model)
    optimizer = engine.make_optimizer(model, cfg.train)
    scaler = engine.make_scaler(amp, device)  # shared across epochs, as fit does
    for epoch in range(epochs):
        stats = engine.train_one_epoch(
            model,
            iter_batches(split, batch_size, shuffle=True, seed=seed + epoch),
            optimizer,
            cfg.loss,
            device,
            grad_clip=1.0,
            amp=amp,
            scaler=scaler,
        )
    return model, before, stats


def test_to_device_cpu_keeps_values_and_does_not_pin(tiny_cfg):
    split = load_split(tiny_cfg.data, "Training")
    batch = next(iter_batches(split, 4))
    moved = to_device(batch, CPU)
    assert set(moved) == set(batch)
    for k, v in batch.items():
        assert moved[k].device.type == "cpu" and moved[k].dtype == v.dtype
        assert torch.equal(moved[k], v), k
        assert moved[k].data_ptr() == v.data_ptr()  # no copy on cpu, as before
    moved = to_device(batch, "cpu")  # a device string works too
    assert all(torch.equal(moved[k], batch[k]) for k in batch)


def test_amp_is_a_no_op_on_cpu(tiny_cfg):
    assert not engine.make_scaler(True, CPU).is_enabled()
    split = load_split(tiny_cfg.data, "Training")
    model_amp, before, stats_amp = _fit_once(tiny_cfg, split, CPU, amp=True)
    assert stats_amp["loss"] > 0 and math.isfinite(stats_amp["loss"])
    after = _params(model_amp)
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not change"
    assert all(v.dtype == torch.float32 for v in after.values())
    # same seed without AMP: the identical update (no scaling, no autocast on cpu)
    model_plain, _, stats_plain = _fit_once(tiny_cfg, split, CPU, amp=False)
    assert stats_amp == pytest.approx(stats_plain)
    for k, v in _params(model_plain).items():
        assert torch.equal(after[k], v), k


@pytest.mark.gpu
def test_cuda_pinned_transfer_and_amp(tiny_cfg):
    cuda = torch.device("cuda")
    split = load_split(tiny_cfg.data, "Training")
    batch = next(iter_batches(split, 4))
    moved = to_device(batch, cuda)
    torch.cuda.synchronize()
    for k, v in batch.items():
        assert moved[k].device.type == "cuda" and moved[k].dtype == v.dtype
        assert torch.equal(moved[k].cpu(), v), k
    assert not any(
        v.is_pinned() for v in batch.values()
    )  # the caller's tensors are left as they were
    assert (
        engine.make_scaler(True, cuda).is_enabled()
        and not engine.make_scaler(False, cuda).is_enabled()
    )
    # a few epochs of small batches: the scaler may skip the first steps while it finds its scale
    model, before, stats = _fit_once(tiny_cfg, split, cuda, amp=True, epochs=3, batch_size=2)
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0
    after = _params(model)
    assert all(
        v.device.type == "cuda" and v.dtype == torch.float32 for v in after.values()
    )  # fp32 master weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
