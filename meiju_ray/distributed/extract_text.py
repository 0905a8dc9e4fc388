"""`meiju-ray extract-text`: transcripts -> per-utterance text features, as a Ray Data job.

    transcripts (id, text) sorted by length --from_items--> map_batches(TextEmbedder, actor pool)
        --> rows in the packed-shard schema (id, emotion, intent, L, L_len)
        --driver--> <dir>/<folder>/<id>.npy (+ packed Parquet shards)

Each actor loads the model once (`num_gpus` per actor when configured, device `cuda` then). Rows are
sorted by text length before batching, so a batch pads little. Only the driver writes files, so the
job also runs on a multi-node cluster without a shared file system.

Transcript files: CSV with a header, columns `FileName,Subtitle` (the official MEIJU CSVs; the
extension of FileName is dropped) or `name,sentence` (the baseline's renamed CSVs, and what the
corpus importers write). An empty subtitle is an utterance with no words: it gets zeros [1, D].
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from meiju_ray.config import ModalityConfig, RayConfig
from meiju_ray.data.layout import DataError
from meiju_ray.data.packing import rows_to_table, table_to_packed, write_shards
from meiju_ray.features.text import TextFeatureConfig, default_folder

# re-exported for the CLI
from meiju_ray.features.transcripts import read_transcripts, write_transcripts  # noqa: F401
from meiju_ray.fileio import atomic_file

log = logging.getLogger("meiju_ray")


class TextEmbedder:
    """Ray Data callable class: one model load per actor; (id, text) rows in, packed feature rows
    out."""

    def __init__(self, text_cfg: dict, modality_name: str = "L", threads: int = 1):
        import torch

        from meiju_ray.features.text import feature_dim, load_text_model

        torch.set_num_threads(max(1, threads))
        self.cfg = TextFeatureConfig(**text_cfg)
        self.model, self.tokenizer = load_text_model(self.cfg.model, self.cfg.device)
        self.modality = ModalityConfig(
            modality_name, modality_name, feature_dim(self.model.config.hidden_size, self.cfg)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from meiju_ray.features.text import embed_texts

        ids = [str(x) for x in batch["id"]]
        feats = embed_texts(self.model, self.tokenizer, [str(t) for t in batch["text"]], self.cfg)
        n = len(ids)
        return rows_to_table(ids, [-1] * n, [-1] * n, {self.modality.name: feats}, [self.modality])


def extract_features(
    items: list[tuple[str, str]],
    out_dirs: dict[str, Path] | Path,
    cfg: TextFeatureConfig,
    folder: str = "",
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    gpus_per_actor: float = 0.0,
    shards_dir: str | Path | None = None,
    ray_cfg: RayConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the Ray Data job; write `<feature dir>/<folder>/<id>.npy` for every item.

    out_dirs: one feature directory for all ids, or {id: feature directory} (the importers route the
    labelled and the unlabelled utterances to different trees). Returns a summary (dim, counts,
    timing).
    """
    import ray.data

    from meiju_ray.distributed.cluster import check_cpu_budget, init_ray

    cfg.validate()
    if not items:
        raise DataError("no utterances to extract")
    folder = folder or default_folder(cfg)
    if gpus_per_actor > 0 and not cfg.device.startswith("cuda"):
        cfg = dataclasses.replace(cfg, device="cuda")
    if cfg.device.startswith("cuda") and gpus_per_actor <= 0:
        gpus_per_actor = 1.0  # Ray hides GPUs from actors that did not ask for one
    init_ray(ray_cfg or RayConfig())
    check_cpu_budget(actors * cpus_per_actor, f"{actors} actors x {cpus_per_actor:g} CPUs")
    t0 = time.time()
    ordered = sorted(items, key=lambda r: len(r[1]))  # batching by length
    ds = ray.data.from_items(
        [{"id": u, "text": t} for u, t in ordered],
        override_num_blocks=max(actors * 4, min(64, len(ordered) // 256 + 1)),
    )
    threads = max(1, int(cpus_per_actor)) if cpus_per_actor >= 1 else 1
    out = ds.map_batches(
        TextEmbedder,
        batch_size=cfg.batch_size * 4,
        batch_format="numpy",
        fn_constructor_kwargs={"text_cfg": dataclasses.asdict(cfg), "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    route = out_dirs if isinstance(out_dirs, dict) else None
    made: set[Path] = set()
    tables, written, empty, dim, total_frames = [], 0, 0, 0, 0
    for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        lens = table.column("L_len").to_numpy()
        dim = dim or int(
            len(table.column("L").combine_chunks().flatten()) // max(1, int(lens.sum()))
        )
        modality = ModalityConfig("L", "L", dim)
        packed = table_to_packed(table, [modality])
        for i, utt in enumerate(packed.ids):
            base = Path(route[utt] if route is not None else out_dirs) / folder
            if base not in made:
                base.mkdir(parents=True, exist_ok=True)
                made.add(base)
            frames = packed.frames("L", i)
            empty += int(frames.shape[0] == 1 and not frames.any())
            with atomic_file(base / f"{utt}.npy", "wb") as fh:  # never half a file (resume)
                np.save(fh, frames)
        written += len(packed.ids)
        total_frames += int(lens.sum())
        if shards_dir is not None:
            tables.append(table)
        if progress:
            progress(f"text features: {written}/{len(items)} utterances ({time.time() - t0:.1f}s)")
    if written != len(items):
        raise RuntimeError(f"extraction returned {written} rows for {len(items)} utterances")
    if shards_dir is not None:
        by_id = {u: i for i, (u, _) in enumerate(items)}
        table = pa.concat_tables(tables)
        table = table.take(
            np.argsort([by_id[u] for u in table.column("id").to_pylist()], kind="stable")
        )
        write_shards(
            [table.slice(s, 1024) for s in range(0, table.num_rows, 1024)],
            Path(shards_dir),
            {
                "split": "text",
                "modalities": [{"name": "L", "folder": folder, "dim": dim, "max_len": 0}],
            },
        )
    seconds = time.time() - t0
    return {
        "utterances": written,
        "dim": dim,
        "folder": folder,
        "model": cfg.model,
        "layers": cfg.layers,
        "layer_reduce": cfg.layer_reduce,
        "pooling": cfg.pooling,
        "empty_texts": empty,
        "mean_tokens": round(total_frames / max(written, 1), 2),
        "seconds": round(seconds, 1),
        "utterances_per_second": round(written / max(seconds, 1e-9), 1),
    }
