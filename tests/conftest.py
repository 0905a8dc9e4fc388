"""Shared fixtures: small synthetic worlds on disk and configs pointing at them.

Ray/MLflow environment settings are applied here, before anything can start Ray
(docs: ray-mlflow-notes §8).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meiju_ray.distributed.cluster import apply_env_defaults, protect_token_file  # no Ray

apply_env_defaults()  # token auth on, as for every user run (before Ray is imported)
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and two busy processes each using both cores
# can make a forward pass many times slower (thread oversubscription): one torch thread in tests.
torch.set_num_threads(1)

from meiju_ray.config import ExperimentConfig, ModalityConfig, load_config  # noqa: E402
from meiju_ray.data.synth import SMALL_MODALITIES as SMALL_MODALITIES_SPECS  # noqa: E402
from meiju_ray.data.synth import write_world  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL_SPECS = SMALL_MODALITIES_SPECS
SMALL_MODALITIES = [{"name": s.name, "folder": s.folder, "dim": s.dim} for s in SMALL_SPECS]
# the same as a data.modalities=... override value
SMALL_MODS = (
    "["
    + ",".join("{name: %(name)s, folder: %(folder)s, dim: %(dim)d}" % m for m in SMALL_MODALITIES)
    + "]"
)


def pytest_collection_modifyitems(config, items):
    """Tests that start Ray run last (the fast tier first, with no Ray processes around yet), in
    their collected order. `gpu` tests run where CUDA is present and are skipped, with the
    reason, everywhere else."""
    items.sort(key=lambda item: "ray" in item.keywords)  # stable: keeps the order within tiers
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="gpu test: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)


def small_config(root: Path, out: Path, *overrides: str) -> ExperimentConfig:
    """experiments/smoke.yaml pointed at a small-dims world."""
    return load_config(
        REPO / "experiments" / "smoke.yaml",
        [f"data.root={root}", f"output_dir={out}", f"data.modalities={SMALL_MODS}", *overrides],
    )


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """~340 labelled training rows with small feature dims: learnable in seconds."""
    out = tmp_path_factory.mktemp("worlds") / "small"
    write_world(out, seed=3, scale=0.15, unlabeled=120, modalities=SMALL_SPECS)
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The minimum world (14 rows per split), small dims: for plumbing tests."""
    out = tmp_path_factory.mktemp("worlds") / "tiny"
    write_world(out, seed=5, scale=0.001, unlabeled=30, modalities=SMALL_SPECS)
    return out


@pytest.fixture()
def tiny_cfg(tiny_world, tmp_path) -> ExperimentConfig:
    return small_config(
        tiny_world, tmp_path / "run", "train.epochs=2", f"data.cache_dir={tmp_path / 'packed'}"
    )


def modality(name: str, dim: int, folder: str | None = None) -> ModalityConfig:
    return ModalityConfig(name, folder or name, dim)


# one private local Ray cluster per test session (docs: ray-mlflow-notes §8)
@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    import ray.data

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    protect_token_file()  # as init_ray does for a user's private cluster
    yield ray
    ray.shutdown()
