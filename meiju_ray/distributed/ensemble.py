"""Teacher ensembles: N seeds of the teacher trained in parallel on Ray, one task per seed.

    <out>/teacher_<k>/      member k (seed = cfg.seed + k): checkpoint/, metrics.json, history.json
    <out>/teacher/          the ensemble checkpoint (train.checkpoint.save_ensemble): the members'
                            mean probabilities, read by the pseudo-labelling actors (each actor
                            loads the N members once) like a single teacher

With scaling.num_workers == 0 each member is a Ray task holding scaling.cpus_per_worker CPUs (and
gpus_per_worker GPUs with use_gpu): as many run at once as the cluster holds. With Ray Train
workers (num_workers >= 1) each member is itself a multi-worker run, so they run one after another.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from meiju_ray.config import ExperimentConfig
from meiju_ray.train import checkpoint

log = logging.getLogger("meiju_ray")


def member_configs(cfg: ExperimentConfig, out: Path, n: int) -> list[ExperimentConfig]:
    """Member k: seed + k, output_dir <out>/teacher_<k>, no MLflow of its own (the driver logs)."""
    return [
        dataclasses.replace(
            cfg,
            seed=cfg.seed + k,
            output_dir=str(out / f"teacher_{k}"),
            tracking=dataclasses.replace(cfg.tracking, enabled=False),
        )
        for k in range(n)
    ]


def _train_member(cfg_dict: dict, init_from: str | None = None) -> dict:
    from meiju_ray.distributed.train import run_train

    return run_train(
        ExperimentConfig.from_dict(cfg_dict), init_from=Path(init_from) if init_from else None
    )


def train_teachers(
    cfg: ExperimentConfig, out: Path, n: int, init_from: Path | None = None
) -> tuple[Path, list[dict]]:
    """Train n teacher seeds (in parallel where they are in-process runs) and write the ensemble
    checkpoint <out>/teacher/checkpoint; returns it and the members' metrics. `init_from`: a
    checkpoint every member starts from (a pre-trained backbone: its heads from its own seed)."""
    init = str(init_from) if init_from is not None else None
    import ray

    from meiju_ray.distributed.cluster import init_ray

    members = member_configs(cfg, Path(out), n)
    s = cfg.scaling
    if s.num_workers >= 1:
        results = [_train_member(m.to_dict(), init) for m in members]
    else:
        init_ray(cfg.ray)
        threads = max(1, int(s.cpus_per_worker))
        task = ray.remote(
            num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0
        )(_train_member)
        log.info(
            "teacher ensemble: %d seeds as Ray tasks of %g CPU%s each",
            n,
            s.cpus_per_worker,
            " + GPU" if s.use_gpu else "",
        )
        refs = [
            task.remote(
                dataclasses.replace(
                    m, train=dataclasses.replace(m.train, num_threads=threads)
                ).to_dict(),
                init,
            )
            for m in members
        ]
        results = ray.get(refs)
    ensemble = checkpoint.save_ensemble(
        Path(out) / "teacher" / "checkpoint",
        [Path(m.output_dir) / "checkpoint" for m in members],
    )
    return ensemble, results
