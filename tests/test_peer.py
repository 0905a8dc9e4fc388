"""The official baseline as a benchmark peer (benchmarks/peer.py): it really runs, on our world.

The official code is not part of this project; it sits beside the checkout in
../shared/peers/MEIJU2025-baseline (skipped where it does not).
"""

from __future__ import annotations

import sys

import pytest

from benchmarks import peer
from meiju_ray.data.synth import write_world

needs_peer = pytest.mark.skipif(
    not (peer.DEFAULT_PEER_DIR / "train_baseline.py").is_file(),
    reason=f"the official baseline is not at {peer.DEFAULT_PEER_DIR}",
)


def test_stage_run_reads_the_peers_log_lines():
    run = peer.StageRun("our", 1)
    fmt = "2026-12-01 10:00:00,000 - our - INFO - "
    lines = [
        "End of training epoch 1 / 2 \t Time Taken: 7 sec",
        "Val result of epoch 1 / 2 emo_metric 0.2000 int_metric 0.3000 joint_metric 0.2400",
        "Val result of epoch 2 / 2 emo_metric 0.2500 int_metric 0.3500 joint_metric 0.2917",
        "Tst result of epoch 2 / 2 emo_metric 0.9000 int_metric 0.9000 joint_metric 0.9000",
        "Best eval epoch 2 found with joint 0.250000 0.350000 0.291667",
        "Tst result emo_metric 0.2100 int_metric 0.3100 joint_metric 0.2504",
    ]
    for t, line in zip([7.0, 7.5, 15.0, 15.2, 15.3, 16.0], lines):
        run.feed(t, fmt + line)
    assert [c[1] for c in run.curve] == [1, 2]
    assert run.best_val_joint == pytest.approx(0.2917)
    assert run.best_epoch == 2
    # the per-epoch test line (logged only with --verbose) is not the final test result
    assert run.test == pytest.approx((0.21, 0.31, 0.2504))
    assert run.epoch_seconds == pytest.approx([7.5, 7.5])


def test_schedule_keeps_the_shipped_recipe_and_scales_it():
    assert peer.schedule("pretrain", None) == (20, 40)
    assert peer.schedule("our", 60) == (15, 45)
    assert sum(peer.schedule("our", 8)) == 8
    assert peer.schedule("pretrain", 2) == (1, 1)


def test_a_python_without_the_peers_imports_is_named_with_the_fix(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named h5py' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SystemExit, match="No module named h5py.*--peer-python"):
        peer.peer_python(str(fake))


def test_a_peer_stage_with_no_best_epoch_is_explained(tmp_path):
    # what the official code prints when no epoch's val joint beats 0, before it fails to load
    # "-1_net_EmoA.pth"
    fake = tmp_path / "fake_peer.py"
    fake.write_text(
        "import sys\n"
        "print('Val result of epoch 1 / 1 emo_metric 0.0192 int_metric 0.0 joint_metric 0.0')\n"
        "print('Best eval epoch -1 found with Joint Metric 0 0 0')\n"
        "sys.exit(1)\n"
    )
    run = peer.StageRun("our", 1)
    with pytest.raises(peer.PeerError, match="val joint 0 in every epoch.*--peer-seed"):
        peer.run_stage([sys.executable, str(fake)], tmp_path, {}, run, tmp_path / "peer.log")
    assert run.best_epoch == -1 and len(run.curve) == 1


def test_a_missing_peer_dir_is_named(tmp_path):
    write_world(tmp_path / "w", seed=0, scale=0.02, unlabeled=10)
    with pytest.raises(peer.PeerError, match="no train_baseline.py"):
        peer.run_official(tmp_path / "w", tmp_path / "work", sys.executable, 1, peer_dir=tmp_path)


@needs_peer
def test_official_recipe_runs_on_our_world_and_scores_the_test_split(tmp_path):
    root = tmp_path / "world"
    write_world(root, seed=0, scale=0.05, unlabeled=10)
    before = (root / "Annotation" / "Testing_files.txt").read_text()
    python = peer.peer_python(None)  # the test extras carry what the peer imports

    # seeded: unseeded, 2 epochs on 16 validation rows once scored val joint 0 in every epoch
    out = peer.run_official(root, tmp_path / "work", python, threads=1, epochs=2, seed=0)

    stages = out["stages"]
    assert [(s.model, len(s.curve)) for s in stages] == [("pretrain", 2), ("our", 2)]
    our = stages[1]
    assert out["best_val_joint"] == pytest.approx(max(c[4] for c in our.curve))
    assert our.best_epoch in (1, 2)
    assert all(0.0 <= v <= 1.0 for v in out["test"])
    assert out["wall"] >= sum(s.wall for s in stages) > 0
    assert out["peak_gb"] > 0.05  # a torch process was sampled, not this test's own memory only
    # stage 2 started from stage 1's checkpoint, inside the benchmark's work dir
    assert list((tmp_path / "work" / "run" / "checkpoints").glob("pretrain_balance_*_1/1/*.pth"))
    # the world the user gave is untouched; the peer read a labelled copy
    assert (root / "Annotation" / "Testing_files.txt").read_text() == before
    labelled = (
        tmp_path / "work" / "labelled_root" / "Annotation" / "Testing_files.txt"
    ).read_text()
    first = labelled.splitlines()[0].split()
    assert first[0].endswith(".mp4") and len(first) == 3

    # a next run gets a fresh name: the peer corrupts result.tsv when re-run into one
    assert peer.next_run_idx(tmp_path / "work" / "run") == 2
