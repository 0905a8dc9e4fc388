"""`evaluate` and `predict` entry points on a saved checkpoint.

`predict` writes the challenge's submission.csv: header `filename,emo_pred,int_pred`, one row per
listed id in list order, ids without extension, lower-case label strings. Zip it for CodaLab.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
import torch

from meiju_ray.config import ExperimentConfig
from meiju_ray.data.batching import iter_batches
from meiju_ray.data.layout import resolve
from meiju_ray.data.packing import PackedSplit, load_split, with_withheld_labels
from meiju_ray.fileio import check_output_file, write_text_atomic
from meiju_ray.labels import MISSING_ID
from meiju_ray.train import checkpoint
from meiju_ray.train.engine import evaluate, predict_probs, resolve_device, set_threads
from meiju_ray.train.metrics import confusion, scores

log = logging.getLogger("meiju_ray")


def with_data_root(cfg: ExperimentConfig, data_root: str | None) -> ExperimentConfig:
    """The checkpoint's config, pointed at another data root (dims and labels stay the model's)."""
    if not data_root:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data_root)))


def load_for_inference(
    checkpoint_dir: str | Path, data_root: str | None, split: str, device: str = "auto"
) -> tuple[torch.nn.Module, ExperimentConfig, PackedSplit, torch.device]:
    set_threads(0)
    dev = resolve_device(device)
    model, cfg, _ = checkpoint.load(checkpoint_dir, dev)
    cfg = with_data_root(cfg, data_root)
    data = load_split(cfg.data, split, lambda msg: log.info(msg))
    return model, cfg, data, dev


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    data_root: str | None = None,
    split: str = "Validation",
    device: str = "auto",
) -> dict:
    """Per-task F1, joint score and confusion matrices of a checkpoint on a labelled split."""
    model, cfg, data, dev = load_for_inference(checkpoint_dir, data_root, split, device)
    if not ((data.emotion >= 0).any() or (data.intent >= 0).any()):
        raise ValueError(f"split {split!r} has no labels to evaluate against")
    result = evaluate(model, iter_batches(data, 64), dev, cfg.train.track)
    probs = result.pop("probs")
    result["n"] = len(data)
    result["confusion_emotion"] = confusion(
        probs["emotion_true"], probs["emotion"].argmax(1), len(cfg.data.emotion_labels)
    ).tolist()
    result["confusion_intent"] = confusion(
        probs["intent_true"], probs["intent"].argmax(1), len(cfg.data.intent_labels)
    ).tolist()
    return result


def submission_csv(
    ids: list[str],
    emo_pred: np.ndarray,
    int_pred: np.ndarray,
    emotion_labels: list[str],
    intent_labels: list[str],
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "emo_pred", "int_pred"])
    for utt, e, i in zip(ids, emo_pred, int_pred):
        writer.writerow([utt, emotion_labels[int(e)], intent_labels[int(i)]])
    return buf.getvalue()


def predict_checkpoint(
    checkpoint_dir: str | Path,
    out: str | Path,
    data_root: str | None = None,
    split: str = "Testing",
    device: str = "auto",
) -> Path:
    """Write submission.csv for every id listed in `split`, in list order."""
    check_output_file(out, "predict --out")
    model, cfg, data, dev = load_for_inference(checkpoint_dir, data_root, split, device)
    probs = predict_probs(model, iter_batches(data, 64), dev)
    text = submission_csv(
        data.ids,
        probs["emotion"].argmax(1),
        probs["intent"].argmax(1),
        cfg.data.emotion_labels,
        cfg.data.intent_labels,
    )
    path = write_text_atomic(out, text)
    log.info("wrote %d predictions for %s to %s", len(data), split, path)
    return path


def labelled_test_split(cfg: ExperimentConfig, truth_file: str = "hidden/Testing_labels.txt"):
    """The test split with its true labels, or None when the data has none: synthetic worlds keep
    them back in `<root>/hidden/Testing_labels.txt`; the corpus importers write them into the
    Testing list itself (the pipeline never trains on that split)."""
    truth_path = resolve(cfg.data.root, truth_file)
    test = load_split(cfg.data, cfg.data.test_split)
    if truth_path.is_file():
        return with_withheld_labels(test, truth_path, cfg.data)
    return test if bool((test.emotion != MISSING_ID).any()) else None


def hidden_test_scores(
    checkpoint_dir: str | Path,
    data_root: str | None = None,
    truth_file: str = "hidden/Testing_labels.txt",
) -> dict | None:
    """Scores on the test split against its true labels (`labelled_test_split`); None when the data
    has none. This is the number to compare methods on: validation picked the best epoch."""
    device = resolve_device("auto")
    model, cfg, _ = checkpoint.load(checkpoint_dir, device)
    cfg = with_data_root(cfg, data_root)
    test = labelled_test_split(cfg, truth_file)
    if test is None:
        return None
    probs = predict_probs(model, iter_batches(test, 64), device)
    return scores(
        test.emotion,
        probs["emotion"].argmax(1),
        test.intent,
        probs["intent"].argmax(1),
        cfg.train.track,
    )
