"""The default semi-supervised pipeline beats its supervised teacher where the pool must help.

The world is the ssl benchmark's (small feature dims, 40 % of Track 1's labelled sizes, a 3,000-row
pool; benchmarks/ssl.py): the labelled rows alone under-determine the class structure that the
pool's rows fill in (the same model given the pool's true labels gains ~0.13 test joint). Scored
on the Testing split against its withheld labels, paired over two seeds.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from meiju_ray.config import load_config
from meiju_ray.data.synth import write_world
from meiju_ray.pipeline import run_pipeline
from tests.conftest import REPO, SMALL_MODS, SMALL_SPECS

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ssl_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("worlds") / "ssl"
    write_world(out, seed=0, scale=0.4, unlabeled=3000, modalities=SMALL_SPECS)
    return out


def _cfg(root, out, seed: int):
    return load_config(
        REPO / "experiments" / "track1_mandarin.yaml",
        [
            f"data.root={root}",
            f"output_dir={out}",
            f"data.modalities={SMALL_MODS}",
            f"seed={seed}",
            "tracking.enabled=false",
            "model.hidden=64",
            "model.fusion_ff=128",
            "model.classifier=[64]",
            "train.epochs=30",
            "train.num_threads=1",
            "pseudo.in_process_below=1000000",
            # one teacher: this tests the distillation into a noised student (no Ray needed);
            # the default 3-seed ensemble is tested in tests/test_pipeline.py
            "pseudo.teachers=1",
        ],
    )


def _gain(root, out, seed: int) -> tuple[int, float]:
    """One seed's pipeline (in a process of its own): pool rows used, test joint gain."""
    m = run_pipeline(_cfg(root, out, seed))
    return m["n_pseudo"], m["gain_joint_test"]


def test_default_ssl_beats_the_supervised_teacher_on_the_test_split(ssl_world, tmp_path):
    # the two seeds are independent one-thread runs: one process each, side by side
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        runs = list(pool.map(_gain, [ssl_world] * 2, [tmp_path / "s0", tmp_path / "s1"], [0, 1]))
    assert [n for n, _ in runs] == [3000, 3000]  # soft targets for every pool row
    gains = [g for _, g in runs]
    # measured over 5 seeds (benchmarks/ssl.py, soft_kd+noise): +0.041, 95 % CI +0.020..+0.063
    assert min(gains) > 0 and np.mean(gains) > 0.015, gains
