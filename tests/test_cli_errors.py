"""User mistakes through the real CLI: one line naming the file or key, exit 2, never a traceback;
Ctrl-C exits 130 (issue "Reliability", item 10)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.cli import main
from meiju_ray.model.network import build_model
from tests.conftest import REPO, SMALL_MODS, small_config

SMOKE = str(REPO / "experiments" / "smoke.yaml")
EXE = str(Path(sys.executable).parent / "meiju-ray")


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "train",
        SMOKE,
        f"data.root={root}",
        f"output_dir={out}",
        f"data.modalities={SMALL_MODS}",
        "train.epochs=1",
        *extra,
    ]


def one_line_error(capsys, args: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line, `error: ...`, and no traceback."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Path:
    """One checkpoint of the tiny world (1 epoch), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cache = out.parent / "packed"
    assert main(train_args(tiny_world, out, f"data.cache_dir={cache}")) == 0
    return out / "checkpoint"


def test_config_values_name_their_key(tiny_world, tmp_path, capsys):
    cache = f"data.cache_dir={tmp_path / 'packed'}"
    for override, expected in (
        ("train.device=tpu", "config key 'train.device': unknown device 'tpu'"),
        ("train.num_threads=-2", "config key 'train.num_threads': expected a number >= 0"),
        ("train.weight_decay=-1", "config key 'train.weight_decay': expected a number >= 0"),
        ("train.lr=[1", "override 'train.lr=[1': the value of 'train.lr' is not valid YAML"),
    ):
        err = one_line_error(capsys, train_args(tiny_world, tmp_path / "run", cache, override))
        assert expected in err, err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_cache_dir_under_a_file_names_the_key(tiny_world, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = train_args(tiny_world, tmp_path / "run", f"data.cache_dir={tmp_path / 'file' / 'c'}")
    err = one_line_error(capsys, args)
    assert "config key 'data.cache_dir'" in err and f"{tmp_path / 'file'} is a file" in err, err


def test_text_bytes_in_a_feature_file_name_the_file(tiny_world, tmp_path, capsys):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world, ignore=shutil.ignore_patterns(".meiju_packed"))
    victim = sorted((world / "Annotation" / "features" / "wav2vec").glob("*Training*.npy"))[0]
    victim.write_bytes(b"id,transcript\nu1,hello\n")  # numpy's own message: "pickled data"
    err = one_line_error(capsys, train_args(world, tmp_path / "run"))
    assert f"unreadable feature file {victim}: not a numeric .npy array" in err, err


def test_an_unknown_device_for_predict(trained, tmp_path, capsys):
    args = ["-q", "predict", "--checkpoint", str(trained), "--out", str(tmp_path / "s.csv")]
    err = one_line_error(capsys, [*args, "--device", "tpu"])
    assert "unknown device 'tpu'" in err


def damaged_checkpoints(trained: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint dir with one file damaged, the file the message must name)."""
    cases: dict[str, tuple[Path, str]] = {}

    def copy(name: str, damaged: str) -> Path:
        d = tmp_path / name
        shutil.copytree(trained, d)
        cases[name] = (d, str(d / damaged))
        return d

    weights = (trained / "model.pt").read_bytes()
    (copy("empty", "model.pt") / "model.pt").write_bytes(b"")
    (copy("truncated", "model.pt") / "model.pt").write_bytes(weights[: len(weights) // 3])
    rng = np.random.default_rng(0)
    (copy("garbage", "model.pt") / "model.pt").write_bytes(rng.bytes(len(weights)))
    # a real state_dict, of a model with another hidden size than its config.yaml says
    other = small_config(trained.parent, trained.parent, "model.hidden=64")
    torch.save(build_model(other).state_dict(), copy("architecture", "model.pt") / "model.pt")
    (copy("config_yaml", "config.yaml") / "config.yaml").write_text("model: {hidden: [32\n")
    (copy("config_list", "config.yaml") / "config.yaml").write_text("- model\n- train\n")
    (copy("meta_json", "meta.json") / "meta.json").write_text('{"epoch": 3,')
    return cases


def test_a_damaged_checkpoint_names_its_file(trained, tmp_path, capsys):
    expected = {
        "empty": "empty file",
        "truncated": "not a readable weights file",
        "garbage": "not a readable weights file",
        "architecture": "weights are of another architecture",
        "config_yaml": "not valid YAML",
        "config_list": "top level must be a mapping",
        "meta_json": "not a readable JSON file",
    }
    for name, (ckpt, damaged) in damaged_checkpoints(trained, tmp_path / "ckpts").items():
        out = tmp_path / f"{name}.csv"
        for args in (
            ["-q", "predict", "--checkpoint", str(ckpt), "--out", str(out)],
            ["-q", "evaluate", "--checkpoint", str(ckpt)],
        ):
            err = one_line_error(capsys, args)
            assert err.startswith(f"error: {damaged}: ") and expected[name] in err, (name, err)
            assert "weights_only" not in err  # torch's advice to unpickle anything, never passed on
        assert not out.exists()


# ---- a read-only data root (release data): the cache goes to a writable place ------------------


def read_only_command(root: Path, view: Path, command: list[str]) -> list[str]:
    """`command` with `view` a read-only view of `root`: chmod for a user, a read-only bind mount
    (in a user + mount namespace) for root, whom permission bits do not stop."""
    view.mkdir()
    if os.geteuid() != 0:
        shutil.copytree(root, view, dirs_exist_ok=True)
        for path in [view, *view.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return command
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    if probe.returncode != 0 or shutil.which("mount") is None:
        pytest.skip("running as root without user namespaces: no way to make a read-only root")
    script = 'mount --bind -o ro "$0" "$1" && shift && exec "$@"'  # $0 = root, $1 = view
    return ["unshare", "-Urm", "sh", "-c", script, str(root), str(view), *command]


def test_a_read_only_data_root_packs_into_the_user_cache(tiny_world, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns(".meiju_packed"))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    try:
        view = tmp_path / "mounted"
        train = [EXE, *train_args(view, tmp_path / "run")[1:]]
        res = subprocess.run(
            read_only_command(root, view, train), capture_output=True, text=True, env=env
        )
        assert res.returncode == 0, res.stderr[-3000:]
        moved = f"data root {view} is read-only: packed shards go to {tmp_path / 'cache'}"
        assert moved in res.stderr and "data.cache_dir" in res.stderr
        packed = tmp_path / "cache" / "meiju_ray" / "packed"
        splits = {m.parent.name.split("-")[0] for m in packed.glob("*/*/manifest.json")}
        assert {"Training", "Validation"} <= splits
        assert not (root / ".meiju_packed").exists() and not (view / ".meiju_packed").exists()
        # and when the user cache cannot be written either: one line saying what to set
        (tmp_path / "file").write_text("x")
        env["XDG_CACHE_HOME"] = str(tmp_path / "file" / "cache")
        view = tmp_path / "mounted_again"
        train = [EXE, *train_args(view, tmp_path / "run2")[1:]]
        res = subprocess.run(
            read_only_command(root, view, train), capture_output=True, text=True, env=env
        )
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
        last = res.stderr.strip().splitlines()[-1]  # after any library's warnings
        assert last.startswith(f"error: the data root {view} is read-only")
        assert "set data.cache_dir to a writable directory" in last
    finally:
        for path in [tmp_path, *tmp_path.rglob("*")]:  # undo a chmod, so pytest can clean up
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)


# ---- Ctrl-C: exit 130, one line, no traceback --------------------------------------------------


def interrupt_when(command: list[str], line_marker: str) -> tuple[int, str]:
    """Start `command` in its own process group, wait for `line_marker` on its stderr, then send
    SIGINT to the group (as a terminal's Ctrl-C does); its exit status and whole stderr."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line_marker in line:
                os.killpg(proc.pid, signal.SIGINT)
                break
        seen.append(proc.stderr.read())
        return proc.wait(timeout=300), "".join(seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_during_training_exits_130(tiny_world, tmp_path):
    args = train_args(tiny_world, tmp_path / "run", f"data.cache_dir={tmp_path / 'packed'}")
    args[args.index("train.epochs=1")] = "train.epochs=100000"  # still training when interrupted
    status, err = interrupt_when([EXE, *args[1:]], "epoch 1/")
    assert status == 130 and err.rstrip().endswith("interrupted"), err[-3000:]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.ray
def test_ctrl_c_during_ray_data_pseudo_labelling_exits_130(trained, tmp_path):
    config = trained.parent / "config.yaml"
    command = [
        EXE,
        "pseudo-label",
        str(config),
        "pseudo.in_process_below=0",  # the Ray Data actor pool even for a tiny pool
        "ray.num_cpus=2",
        "--checkpoint",
        str(trained),
        "--out",
        str(tmp_path / "pseudo"),
    ]
    status, err = interrupt_when(command, "with Ray Data")
    assert status == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err, err[-3000:]
    assert not (tmp_path / "pseudo").exists()


@pytest.mark.ray
def test_ctrl_c_during_ray_train_exits_130(tiny_world, tmp_path):
    """Ray Train's own SIGINT handler aborts the run and then exits from inside fit()."""
    args = train_args(tiny_world, tmp_path / "run", f"data.cache_dir={tmp_path / 'packed'}")
    args[args.index("train.epochs=1")] = "train.epochs=100000"
    command = [EXE, *args[1:], "scaling.num_workers=1", "ray.num_cpus=2"]
    status, err = interrupt_when(command, "epoch 1/")
    assert status == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err, err[-3000:]
