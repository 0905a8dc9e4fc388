"""Extractor throughput: clips/s per actor, 1 vs 2 actors, for each `meiju-ray extract` model.

Real clips (espeak-ng speech muxed with scikit-image's astronaut photograph, PyAV-encoded, as the
tests build them; ~1.7 s each, 25 fps) go through `distributed.extract_media.run_media_job`, the
Ray Data actor-pool job `extract` runs, with 1 and then 2 actors of 0.5 CPU and one torch thread.
Models (nothing is downloaded):
  opensmile      eGeMAPS low-level descriptors (the offline default; real)
  wav2vec2-base  transformers' Wav2Vec2Config() = the wav2vec2-base architecture (95M), random
                 weights: the same compute as the trained model, not its features
  vit-base       Haar face crops at 3 fps -> ViTConfig() = ViT-B/16 at 224 px (86M), random weights
Each row's clock covers the whole job, actor start-up and model load included, as a user sees it
(the local cluster is started before any clock); the steady rate without start-up is also shown
(from the first to the last result batch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import BENCH_ROOT, md_table

TITLE = "7. Extractors: clips/s per actor, 1 vs 2 actors (Ray Data actor pool)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips", type=int, default=32, help="clips per job")
    p.add_argument(
        "--batch-size", type=int, default=2, help="clips per actor call (extract uses 4)"
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=("opensmile", "wav2vec2-base", "vit-base"),
        default=["opensmile", "wav2vec2-base", "vit-base"],
    )
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])


def _clips(n: int) -> list[tuple[str, str]]:
    from tests import clips

    out = BENCH_ROOT / "extract" / "clips"
    speech = [clips.speech(s) for s in clips.SENTENCES]
    face = clips.picture("astronaut")
    items = []
    for i in range(n):
        path = out / f"clip_{i:04d}.mp4"
        if not path.is_file():
            clips.write_clip(path, face, speech[i % len(speech)], fps=25)
        items.append((path.stem, str(path)))
    return items


def _base_model(name: str) -> Path:
    """A base-sized architecture with random weights, saved once (the loading code is real)."""
    import torch

    out = BENCH_ROOT / "extract" / "models" / name
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    if name == "wav2vec2-base":
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(out)
        Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(out)
    else:
        from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

        ViTModel(ViTConfig()).save_pretrained(out)
        ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


def _job(name: str) -> tuple[str, dict]:
    if name == "opensmile":
        return "audio", {"model": "opensmile"}
    if name == "wav2vec2-base":
        return "audio", {"model": str(_base_model(name))}
    return "visual", {"model": str(_base_model(name)), "fps": 3.0}


def run(args: argparse.Namespace) -> str:
    import av

    from meiju_ray.config import RayConfig
    from meiju_ray.distributed.cluster import init_ray
    from meiju_ray.distributed.extract_media import run_media_job

    items = _clips(args.clips)
    init_ray(RayConfig())  # before any clock starts: the cluster's start-up is no job's cost
    seconds_of_audio = 0.0
    for _, path in items:
        with av.open(path) as c:
            seconds_of_audio += float(c.duration or 0) / 1e6
    rows, rates = [], {}
    for name in args.models:
        kind, cfg = _job(name)
        for actors in args.actors:
            stamps: list[tuple[float, int]] = []  # (arrival, clips) per result batch
            t0 = time.perf_counter()
            stats = run_media_job(
                kind,
                cfg,
                items,
                lambda batch, stamps=stamps: stamps.append((time.perf_counter(), len(batch))),
                actors=actors,
                cpus_per_actor=0.5,
                batch_size=args.batch_size,
                ray_cfg=RayConfig(),
            )
            wall = time.perf_counter() - t0
            # clips that arrived after the first batch, over the time since it arrived
            span = stamps[-1][0] - stamps[0][0] if len(stamps) > 1 else 0.0
            steady = (stats["videos"] - stamps[0][1]) / span if span > 0 else float("nan")
            rates[(name, actors)] = stats["videos"] / wall
            rows.append(
                [
                    name,
                    actors,
                    stats["videos"],
                    round(wall, 1),
                    round(stats["videos"] / wall, 2),
                    round(stats["videos"] / wall / actors, 2),
                    round(steady, 2),
                    f"{stats['model_loads']} ({len(stats['videos_per_worker'])} busy)",
                    (
                        f"{rates[(name, actors)] / rates[(name, 1)]:.2f}x"
                        if actors != 1 and (name, 1) in rates
                        else "-"
                    ),
                ]
            )
            print(f"[bench] {name} x{actors}: {stats}", flush=True)
    table = md_table(
        [
            "model",
            "actors",
            "clips",
            "wall s",
            "clips/s",
            "clips/s per actor",
            "steady clips/s (no start-up)",
            "model loads (actors busy)",
            "vs 1 actor",
        ],
        rows,
    )
    return (
        f"{len(items)} clips, {seconds_of_audio / len(items):.1f} s each on average; actors of "
        "0.5 CPU and 1 torch thread on a local Ray cluster of the machine's CPUs.\n\n" + table
    )
