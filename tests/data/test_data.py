"""Layout reading, feature checks, packing cache and batching/masking."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from meiju_ray.config import DataConfig, ModalityConfig
from meiju_ray.data.batching import BufferPool, batch_order, collate, iter_batches
from meiju_ray.data.layout import DataError, load_feature, read_split_list, unlabeled_list
from meiju_ray.data.packing import MANIFEST, cache_root, load_split, pack_split
from meiju_ray.labels import EMOTIONS, INTENTS
from tests.conftest import SMALL_MODALITIES


def data_cfg(root: Path, cache: Path | None = None) -> DataConfig:
    return DataConfig(
        root=str(root),
        modalities=[ModalityConfig(**m) for m in SMALL_MODALITIES],
        cache_dir=str(cache) if cache else "",
        rows_per_shard=5,
    )


def write_list(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- list files ------------------------------------------------------------------------------


def test_list_formats(tmp_path):
    official = read_split_list(
        write_list(tmp_path / "a.txt", "x1.mp4 happy questioning\nx2.mp4 Anger neutral\n"),
        list(EMOTIONS),
        list(INTENTS),
    )
    assert official.ids == ["x1", "x2"]
    assert official.emotion.tolist() == [0, 4] and official.intent.tolist() == [0, 7]
    plain = read_split_list(
        write_list(tmp_path / "b.txt", "x1 sad wishing\n\n# comment\n"),
        list(EMOTIONS),
        list(INTENTS),
    )
    assert plain.ids == ["x1"] and plain.emotion.tolist() == [2] and plain.intent.tolist() == [6]
    ids_only = read_split_list(
        write_list(tmp_path / "c.txt", "FileName\nt1.mp4\nt2.mp4\n"), list(EMOTIONS), list(INTENTS)
    )
    assert ids_only.ids == ["t1", "t2"] and (ids_only.emotion == -1).all() and not ids_only.labelled
    missing = read_split_list(
        write_list(tmp_path / "d.txt", "m1 happy -\n"), list(EMOTIONS), list(INTENTS)
    )
    assert missing.intent.tolist() == [-1] and missing.emotion.tolist() == [0]


def test_custom_label_sets(tmp_path):
    acts = ["inform", "question", "directive", "commissive"]
    lst = read_split_list(
        write_list(tmp_path / "a.txt", "d1 neutral question\nd2 happy commissive\n"),
        list(EMOTIONS),
        acts,
    )
    assert lst.intent.tolist() == [1, 3]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "x1.mp4 happy questioning\nx2.mp4 joyful neutral\n",
            r"a\.txt:2: unknown emotion label 'joyful'",
        ),
        (
            "x1.mp4 happy questioning\nx2.mp4 happy pondering\n",
            r"a\.txt:2: unknown intent label 'pondering'",
        ),
        ("x1.mp4 happy\n", r"a\.txt:1: expected '<id> <emotion> <intent>'"),
        (
            "x1.mp4 happy neutral\nx1.mp4 sad neutral\n",
            r"a\.txt:2: duplicate id 'x1' \(first on line 1\)",
        ),
        ("\n\n", r"no utterances listed"),
        ("x1.mp4 happy neutral\n../../etc/x.mp4 sad neutral\n", r"a\.txt:2: id '\.\./\.\./etc/x'"),
        ("/abs/x.mp4 happy neutral\n", r"a\.txt:1: id '/abs/x' is not a plain file name"),
        ("..\n", r"a\.txt:1: id '\.\.' is not a plain file name"),
    ],
)
def test_bad_list_files_name_the_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_split_list(write_list(tmp_path / "a.txt", text), list(EMOTIONS), list(INTENTS))


def test_a_utf8_bom_is_not_part_of_the_first_id(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffx1.mp4 happy neutral\n".encode())
    assert read_split_list(path, list(EMOTIONS), list(INTENTS)).ids == ["x1"]


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match="split list not found"):
        read_split_list(tmp_path / "nope.txt", list(EMOTIONS), list(INTENTS))


# ---- feature files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 7), np.float32), r"feature dim D=7 but .* says dim=4"),
        (np.full((3, 4), np.nan, np.float32), "NaN or Inf"),
        (np.zeros((0, 4), np.float32), "T=0"),
        (np.zeros((2, 3, 4), np.float32), "expected a 2-D"),
        (np.zeros((3, 4), np.complex64), "complex64 is not a real number type"),
        (np.array([["a"] * 4] * 2), "is not a real number type"),
    ],
)
def test_bad_feature_files(tmp_path, array, message):
    path = tmp_path / "u.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message) as err:
        load_feature(path, ModalityConfig("A", "a", 4))
    assert str(path) in str(err.value)


def test_unreadable_and_missing_feature(tmp_path):
    path = tmp_path / "u.npy"
    path.write_bytes(b"not an npy file")
    with pytest.raises(DataError, match="unreadable feature file"):
        load_feature(path, ModalityConfig("A", "a", 4))
    with pytest.raises(DataError, match="missing feature file"):
        load_feature(tmp_path / "gone.npy", ModalityConfig("A", "a", 4))


def test_max_len_subsamples_and_t1_zero_rows(tmp_path):
    path = tmp_path / "u.npy"
    np.save(path, np.arange(40, dtype=np.float64).reshape(10, 4))
    out = load_feature(path, ModalityConfig("A", "a", 4, max_len=4))
    assert out.dtype == np.float32 and out.shape == (4, 4)
    assert out[0, 0] == 0 and out[-1, 0] == 36  # first and last frames kept
    np.save(path, np.zeros((1, 4), np.float32))
    assert load_feature(path, ModalityConfig("A", "a", 4)).shape == (1, 4)


# ---- packing ---------------------------------------------------------------------------------


def test_pack_roundtrip_matches_npy(tiny_world, tmp_path):
    cfg = data_cfg(tiny_world, tmp_path / "cache")
    split = load_split(cfg, "Training")
    lst = read_split_list(
        tiny_world / "Annotation" / "Training_files.txt", list(EMOTIONS), list(INTENTS)
    )
    assert split.ids == lst.ids
    assert (split.emotion == lst.emotion).all() and (split.intent == lst.intent).all()
    for i in (0, 7, len(split) - 1):
        for m in cfg.modalities:
            expected = np.load(
                tiny_world / "Annotation" / "features" / m.folder / f"{split.ids[i]}.npy"
            )
            np.testing.assert_array_equal(split.frames(m.name, i), expected)
    assert (
        len(list((tmp_path / "cache").glob("Training-*/part-*.parquet"))) == 3
    )  # 14 rows / 5 per shard


def test_pack_cache_reused_and_invalidated(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    cfg = data_cfg(world)
    first = pack_split(cfg, "Validation")
    stamp = (first / MANIFEST).stat().st_mtime_ns
    assert pack_split(cfg, "Validation") == first and (first / MANIFEST).stat().st_mtime_ns == stamp
    feature = next((world / "Annotation" / "features" / "wav2vec").glob("Track1_Validation_*.npy"))
    np.save(feature, np.ones((3, 24), np.float32))
    os.utime(feature, ns=(1, 1))
    second = pack_split(cfg, "Validation")
    assert second != first and not first.exists()  # stale pack replaced
    assert cache_root(cfg) == world / ".meiju_packed"


def test_listed_id_without_features_fails_and_writes_nothing(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    lst = world / "Annotation" / "Training_files.txt"
    lst.write_text(lst.read_text() + "ghost_utt.mp4 happy agreeing\n")
    cfg = data_cfg(world, tmp_path / "cache")
    with pytest.raises(
        DataError,
        match=r"missing feature file: .*ghost_utt\.npy "
        r"\(id 'ghost_utt' listed in .*Training_files\.txt\)",
    ):
        pack_split(cfg, "Training")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("Training-*"))


def test_bad_feature_mid_pack_leaves_no_partial_pack(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    ids = read_split_list(
        world / "Annotation" / "Training_files.txt", list(EMOTIONS), list(INTENTS)
    ).ids
    np.save(
        world / "Annotation" / "features" / "RoBERTa" / f"{ids[-1]}.npy",
        np.zeros((4, 31), np.float32),
    )
    cfg = data_cfg(world, tmp_path / "cache")
    with pytest.raises(DataError, match="feature dim D=31"):
        pack_split(cfg, "Training")
    assert list((tmp_path / "cache").iterdir()) == []  # the temp dir is cleaned up


def test_unlabelled_pool_from_list_or_folder(tiny_world, tmp_path):
    cfg = data_cfg(tiny_world, tmp_path / "cache")
    pool = unlabeled_list(cfg)
    assert len(pool.ids) == 30 and (pool.emotion == -1).all()
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    (world / "NoAnnotation" / "NoAnnotation_files.txt").unlink()
    assert unlabeled_list(data_cfg(world)).ids == sorted(pool.ids)
    assert len(load_split(data_cfg(world, tmp_path / "c2"), "NoAnnotation")) == 30


# ---- batching --------------------------------------------------------------------------------


def test_collate_pads_with_zeros_and_masks(tiny_world, tmp_path):
    split = load_split(data_cfg(tiny_world, tmp_path / "cache"), "Training")
    rows = np.array([0, 3, 5])
    batch = collate(split, rows)
    for m in ("A", "V", "L"):
        lens = split.lengths(m)[rows]
        assert batch[m].shape == (3, lens.max(), {"A": 24, "V": 12, "L": 32}[m])
        assert batch[f"{m}_mask"].sum(1).tolist() == lens.tolist()
        assert (batch[m][~batch[f"{m}_mask"]] == 0).all()
        torch.testing.assert_close(batch[m][1, : lens[1]], torch.from_numpy(split.frames(m, 3)))
    assert batch["index"].tolist() == [0, 3, 5] and batch["weight"].tolist() == [1.0, 1.0, 1.0]


def test_recycled_buffers_never_overwrite_a_batch_still_held(tiny_world, tmp_path):
    split = load_split(data_cfg(tiny_world, tmp_path / "cache"), "Training")
    order = batch_order(split, 4, True, np.random.default_rng(0), True)
    held = [
        b for b in iter_batches(split, 4, shuffle=True, seed=0)
    ]  # every batch kept alive at once
    for rows, batch in zip(
        order, held
    ):  # none was overwritten by a later one; same values as unpooled
        fresh = collate(split, rows)
        for key in fresh:
            torch.testing.assert_close(batch[key], fresh[key])
    pool, reused = BufferPool(), 0
    for rows in order:  # batches dropped at once: the pool hands the same memory back
        a = collate(split, rows, pool)["A"]
        ptr = a.data_ptr()
        del a
        reused += collate(split, rows, pool)["A"].data_ptr() == ptr
    assert reused == len(order)


@pytest.mark.parametrize("bucket", [True, False])
def test_every_row_once_per_epoch(tiny_world, tmp_path, bucket):
    split = load_split(data_cfg(tiny_world, tmp_path / "cache"), "Training")
    rows = np.concatenate(batch_order(split, 4, True, np.random.default_rng(0), bucket))
    assert sorted(rows.tolist()) == list(range(len(split)))
    seen = torch.cat(
        [b["index"] for b in iter_batches(split, 4, shuffle=True, seed=1, bucket_by_length=bucket)]
    )
    assert sorted(seen.tolist()) == list(range(len(split)))


def test_bucketing_reduces_padding(small_world, tmp_path):
    split = load_split(data_cfg(small_world, tmp_path / "cache"), "Training")

    def padded_frames(bucket: bool) -> int:
        return sum(int(b["A_mask"].numel()) for b in iter_batches(split, 16, True, 0, bucket))

    assert padded_frames(True) < 0.8 * padded_frames(False)


def test_epoch_rows_keep_every_gold_row_and_draw_pool_rows_afresh():
    from meiju_ray.data.batching import epoch_rows
    from meiju_ray.data.packing import PackedSplit

    n_gold, n_pool = 10, 50
    split = PackedSplit(
        ids=[str(i) for i in range(n_gold + n_pool)],
        emotion=np.zeros(n_gold + n_pool, np.int64),
        intent=np.zeros(n_gold + n_pool, np.int64),
        weight=np.ones(n_gold + n_pool, np.float32),
        values={"A": np.zeros((n_gold + n_pool, 2), np.float32)},
        offsets={"A": np.arange(n_gold + n_pool + 1, dtype=np.int64)},
        pseudo=np.arange(n_gold + n_pool) >= n_gold,
    )
    a, b = epoch_rows(split, 2.0, seed=0), epoch_rows(split, 2.0, seed=1)
    for rows in (a, b):
        assert set(range(n_gold)) <= set(rows.tolist()) and len(rows) == n_gold + 20
        assert len(set(rows.tolist())) == len(rows)
    assert set(a.tolist()) != set(b.tolist())  # another draw of pool rows each epoch
    assert epoch_rows(split, 0.0, seed=0) is None  # every row
    assert epoch_rows(split, 5.0, seed=0) is None  # the pool is not larger than asked


# ---- leaks and lost labels are errors, found before any training ---------------------------------


def _copy(tiny_world: Path, tmp_path: Path) -> Path:
    root = tmp_path / "w"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns(".meiju_packed"))
    return root


def _append(path: Path, line: str) -> int:
    text = path.read_text()
    path.write_text(text + line + "\n")
    return len(text.splitlines()) + 1


def test_an_id_in_two_splits_is_a_leak_named_by_file_and_line(tiny_world, tmp_path):
    from meiju_ray.data.layout import check_splits

    root = _copy(tiny_world, tmp_path)
    ann = root / "Annotation"
    first_train = (ann / "Training_files.txt").read_text().split()[0]
    line = _append(ann / "Validation_files.txt", f"{first_train} happy questioning")
    with pytest.raises(DataError, match=rf"Validation_files.txt:{line}: id .* is also in Training"):
        check_splits(data_cfg(root))
    # a pool id that is also a Training id
    root = _copy(tiny_world, tmp_path / "b")
    pool_list = root / "NoAnnotation" / "NoAnnotation_files.txt"
    if not pool_list.is_file():  # the pool is listed by its feature folder: list it explicitly
        ids = sorted(p.stem for p in (root / "NoAnnotation" / "features" / "wav2vec").glob("*.npy"))
        pool_list.write_text("".join(f"{i}.mp4\n" for i in ids))
    line = _append(pool_list, first_train)
    check_splits(data_cfg(root))  # the pool is only read when asked for
    with pytest.raises(DataError, match=rf"NoAnnotation_files.txt:{line}: id .* also in Training"):
        check_splits(data_cfg(root), pool=True)


def test_a_labelled_line_without_labels_is_an_error(tiny_world, tmp_path):
    from meiju_ray.data.layout import check_splits

    root = _copy(tiny_world, tmp_path)
    lines = (root / "Annotation" / "Training_files.txt").read_text().splitlines()
    lines[2] = lines[2].split()[0]  # only the id: its labels would be dropped silently
    (root / "Annotation" / "Training_files.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Training_files.txt:3: id .* has no labels"):
        check_splits(data_cfg(root))


def test_a_cache_missing_a_shard_is_packed_again(tiny_world, tmp_path):
    cfg = dataclasses_replace_rows(data_cfg(tiny_world, tmp_path / "cache"), rows_per_shard=4)
    packed = pack_split(cfg, "Training")
    n = len(load_split(cfg, "Training"))
    sorted(packed.glob("part-*.parquet"))[1].unlink()  # e.g. a copy that lost a file
    assert len(load_split(cfg, "Training")) == n  # detected from the manifest and re-packed


def dataclasses_replace_rows(cfg: DataConfig, rows_per_shard: int) -> DataConfig:
    import dataclasses

    return dataclasses.replace(cfg, rows_per_shard=rows_per_shard)
