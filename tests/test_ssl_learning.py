"""The default semi-supervised pipeline beats its supervised teacher where the pool must help.

The world is the ssl benchmark's (small feature dims, 40 % of Track 1's labelled sizes, a 3,000-row
pool; benchmarks/ssl.py): the labelled rows alone under-determine the class structure that the
pool's rows fill in (the same model given the pool's true labels gains ~0.13 test joint). Scored
on the Testing split against its withheld labels, paired over two seeds.
"""

from __future__ import annotations

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


def test_default_ssl_beats_the_supervised_teacher_on_the_test_split(ssl_world, tmp_path):
    gains = []
    for seed in (0, 1):
        m = run_pipeline(_cfg(ssl_world, tmp_path / f"s{seed}", seed))
        assert m["n_pseudo"] == 3000  # soft targets for every pool row
        gains.append(m["gain_joint_test"])
    # measured over 5 seeds (benchmarks/ssl.py, soft_kd+noise): +0.041, 95 % CI +0.020..+0.063
    assert min(gains) > 0 and np.mean(gains) > 0.015, gains
