"""Test-split scoring: where the true labels of the Testing split come from, and the epoch line."""

from __future__ import annotations

import logging
import shutil

import numpy as np

from meiju_ray.labels import MISSING_ID
from meiju_ray.train.inference import labelled_test_split
from meiju_ray.train.local import EpochLog
from tests.conftest import small_config


def test_test_labels_come_from_hidden_or_from_the_list_itself(tiny_world, tmp_path):
    # a synthetic world keeps them back in hidden/Testing_labels.txt
    cfg = small_config(tiny_world, tmp_path / "a", f"data.cache_dir={tmp_path / 'c1'}")
    withheld = labelled_test_split(cfg)
    assert withheld is not None and (withheld.emotion != MISSING_ID).all()

    # an importer writes them into the Testing list (no hidden/Testing_labels.txt)
    root = tmp_path / "imported"
    shutil.copytree(tiny_world, root)
    truth = (root / "hidden" / "Testing_labels.txt").read_text()
    (root / "Annotation" / "Testing_files.txt").write_text(truth)
    (root / "hidden" / "Testing_labels.txt").unlink()
    cfg = small_config(root, tmp_path / "b", f"data.cache_dir={tmp_path / 'c2'}")
    listed = labelled_test_split(cfg)
    assert listed is not None and listed.ids == withheld.ids
    assert np.array_equal(listed.emotion, withheld.emotion)
    assert np.array_equal(listed.intent, withheld.intent)

    # neither: the test split has no labels to score against
    (root / "Annotation" / "Testing_files.txt").write_text(
        "\n".join(line.split()[0] for line in truth.splitlines() if line.strip()) + "\n"
    )
    cfg = small_config(root, tmp_path / "c", f"data.cache_dir={tmp_path / 'c3'}")
    assert labelled_test_split(cfg) is None


def test_epoch_line_counts_epochs_and_gives_an_eta(caplog):
    m = {"train_loss": 1.0, "val_emo": 0.5, "val_int": 0.4, "val_joint": 0.44, "epoch_seconds": 0.1}
    log_epoch = EpochLog(epochs=3)
    with caplog.at_level(logging.INFO, logger="meiju_ray"):
        for epoch in range(3):
            log_epoch(epoch, m, is_best=epoch == 0)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "*best" in lines[0] and "*best" not in lines[1]
    assert "ETA 0:0" in lines[0] and "ETA" in lines[1] and "ETA" not in lines[2]
