"""Faults of the packed cache (issue "Reliability", item 11): a SIGKILLed pack leaves its temp dir,
which the next pack removes (never one of a live pack); a damaged cached shard is packed again."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

from meiju_ray.config import DataConfig, ExperimentConfig
from meiju_ray.data.layout import split_list
from meiju_ray.data.packing import (
    cache_is_intact,
    fingerprint,
    load_split,
    pack_split,
    shard_files,
)
from meiju_ray.fileio import HOST
from tests.conftest import REPO, SMALL_MODALITIES

# a real pack in its own process that stops (forever) right after writing its first shard, so a
# test can kill it in the middle of a pack, with part of the split written to its temp dir
HOLDING_PACK = """
import json, signal, sys
from meiju_ray.config import ExperimentConfig
from meiju_ray.data.packing import pack_split

cfg = ExperimentConfig.from_dict({"data": json.loads(sys.argv[1])}).data

def hold(message):
    if message.startswith("packed "):
        print("holding after: " + message, flush=True)
        signal.pause()

pack_split(cfg, sys.argv[2], hold)
"""


def data_cfg(root: Path, cache: Path, rows_per_shard: int = 4) -> DataConfig:
    tree = {
        "root": str(root),
        "cache_dir": str(cache),
        "modalities": SMALL_MODALITIES,
        "rows_per_shard": rows_per_shard,
    }
    return ExperimentConfig.from_dict({"data": tree}).data


def start_holding_pack(cfg: DataConfig, split: str) -> subprocess.Popen:
    """A pack of `split` in a child process, returned once it holds a half-written temp dir."""
    tree = json.dumps(ExperimentConfig(data=cfg).to_dict()["data"])
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDING_PACK, tree, split],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    line = proc.stdout.readline()
    assert line.startswith("holding after: packed 4/"), line
    return proc


def temp_dir_of(cfg: DataConfig, split: str, pid: int) -> Path:
    key = fingerprint(cfg, split_list(cfg, split))
    return Path(cfg.cache_dir) / f".{split}-{key}.tmp-{pid}@{HOST}"


def test_a_killed_pack_leaves_no_temp_dir_behind_and_a_live_one_is_kept(tiny_world, tmp_path):
    cfg = data_cfg(tiny_world, tmp_path / "cache")
    live = start_holding_pack(cfg, "Validation")
    try:
        live_tmp = temp_dir_of(cfg, "Validation", live.pid)
        killed = start_holding_pack(cfg, "Training")
        killed_tmp = temp_dir_of(cfg, "Training", killed.pid)
        assert list(killed_tmp.glob("part-*.parquet"))  # half a pack, as SIGKILL leaves it
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        packed = pack_split(cfg, "Training")  # the next run
        assert not killed_tmp.exists()
        assert list(live_tmp.glob("part-*.parquet"))  # a pack still being written is kept
        assert cache_is_intact(packed) and len(load_split(cfg, "Training")) == 14
    finally:
        live.kill()
        live.wait()
    pack_split(cfg, "Validation")  # its process is gone now: its temp dir goes too
    assert not live_tmp.exists()
    assert sorted(p.name.split("-")[0] for p in Path(cfg.cache_dir).iterdir()) == [
        "Training",
        "Validation",
    ]


def damage_a_data_page(shard: Path) -> None:
    """Flip bytes inside the shard's first column data, leaving its footer (and so the row
    counts the cache check reads) intact."""
    data = bytearray(shard.read_bytes())
    for i in range(200, 300):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))


def test_a_damaged_cached_shard_is_packed_again_with_a_log_line(tiny_world, tmp_path, caplog):
    cfg = data_cfg(tiny_world, tmp_path / "cache")
    packed = pack_split(cfg, "Training")
    before = load_split(cfg, "Training")
    shard = shard_files(packed)[1]
    damage_a_data_page(shard)
    assert cache_is_intact(packed)  # footer and row counts still agree with the manifest
    with caplog.at_level(logging.WARNING, logger="meiju_ray"):
        after = load_split(cfg, "Training")
    assert f"{shard}: unreadable packed shard" in caplog.text and "packing Training again" in (
        caplog.text
    )
    assert after.ids == before.ids and (after.values["A"] == before.values["A"]).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meiju_ray"):
        load_split(cfg, "Training")  # and the next run just reads it
    assert "unreadable" not in caplog.text


def test_a_damaged_pool_shard_is_packed_again_before_pseudo_labelling(tiny_world, tmp_path, caplog):
    from meiju_ray.config import load_config
    from meiju_ray.data.layout import UNLABELED
    from meiju_ray.distributed.pseudo_label import run_pseudo_label
    from meiju_ray.distributed.train import run_train
    from tests.conftest import SMALL_MODS

    cfg = load_config(
        REPO / "experiments" / "smoke.yaml",
        [
            f"data.root={tiny_world}",
            f"output_dir={tmp_path / 'run'}",
            f"data.modalities={SMALL_MODS}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.rows_per_shard=8",
            "train.epochs=1",
        ],
    )
    run_train(cfg)
    pool = pack_split(cfg.data, UNLABELED)
    damage_a_data_page(shard_files(pool)[0])
    with caplog.at_level(logging.WARNING, logger="meiju_ray"):
        info = run_pseudo_label(cfg, tmp_path / "run" / "checkpoint", tmp_path / "pseudo")
    assert "cannot be read back" in caplog.text and "packing the pool again" in caplog.text
    assert info["n_rows"] == 30 and info["engine"] == "in_process"
