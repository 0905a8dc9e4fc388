"""Joint training with Ray Train: `TorchTrainer` + DDP (gloo on CPU, nccl on GPU).

The worker loop is the local engine (`engine.fit`) with Ray's four marked lines around it:
[1] data: this rank's rows of the packed splits (shipped once through the object store),
[2] model: `prepare_model` wraps it in DDP, [3] report: metrics + a checkpoint every epoch,
[4] fit: driver side, with `FailureConfig` so a dead worker is replaced and training resumes
from the latest checkpoint. Epoch metrics reach the driver while training runs: a Train V2
`UserCallback` on the controller puts rank 0's reports on a Ray queue the driver drains.

`run_train` is the one entry point for training: in this process (`scaling.num_workers == 0`,
the inner ring's `run_local`) or here.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from meiju_ray.config import ExperimentConfig
from meiju_ray.data.batching import epoch_rows, iter_batches, shard_rows
from meiju_ray.data.layout import UNLABELED
from meiju_ray.data.packing import (
    PackedSplit,
    pack_split,
    packed_columns,
    shard_files,
    table_to_packed,
)
from meiju_ray.fileio import locked_dir
from meiju_ray.model.network import build_model
from meiju_ray.train import augment
from meiju_ray.train import consistency as cons
from meiju_ray.train.checkpoint import is_backbone, load_into
from meiju_ray.train.engine import (
    FitResult,
    fit,
    make_optimizer,
    seed_everything,
    set_threads,
    unwrap,
)
from meiju_ray.train.local import (
    EpochCallback,
    EpochLog,
    class_weights_for,
    initial_weights,
    load_train_val,
    pool_batch_size,
    prepare_output,
    run_local,
    write_outputs,
)

log = logging.getLogger("meiju_ray")
STATE_FILE = "train_state.pt"


def _save_state(
    directory: str,
    model: torch.nn.Module,
    optimizer,
    epoch: int,
    result: FitResult,
    teacher: torch.nn.Module | None = None,
) -> None:
    torch.save(
        {
            "model": unwrap(model).state_dict(),
            "ema_teacher": None if teacher is None else teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_epoch": result.best_epoch,
            "best": result.best,
            "best_state": result.best_state,
            "history": result.history,
        },
        os.path.join(directory, STATE_FILE),
    )


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker. `config` = {"cfg": dict, "train": ref, "val": ref, ...}."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    set_threads(cfg.train.num_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    seed_everything(cfg.seed)

    # [1] Data: every rank holds the (small) labelled splits and trains on its own rows each epoch.
    train: PackedSplit = ray.get(config["train"])
    val: PackedSplit = ray.get(config["val"])
    per_rank_batch = max(1, cfg.train.batch_size // world)

    # [2] Model: DDP over gloo (CPU) or nccl (GPU); device from Ray.
    model = build_model(cfg)
    if config.get("init") is not None:  # a student's teacher, or a pre-trained backbone
        load_into(model, ray.get(config["init"]), Path(config["init_path"]), config["init_partial"])
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(model, cfg.train)
    state, start_epoch = None, 0
    # Online consistency: this rank's shard of the pool, read once from its Ray Data shard (the
    # driver never holds the pool), and the EMA teacher (a copy of the model, or resumed below).
    pool = _read_pool_shard(cfg) if cons.is_active(cfg.consistency) else None
    teacher = None if pool is None else cons.make_teacher(unwrap(model)).to(device)
    restored = ray.train.get_checkpoint()
    if restored:  # resume after a worker failure (or a restarted run)
        with restored.as_directory() as d:
            saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        unwrap(model).load_state_dict(saved["model"])
        if teacher is not None and saved.get("ema_teacher") is not None:
            teacher.load_state_dict(saved["ema_teacher"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch = saved["epoch"] + 1
        state = FitResult(saved["best_epoch"], saved["best"], saved["history"], saved["best_state"])

    def report(epoch: int, metrics: dict, is_best: bool) -> None:
        # [3] Report: every rank reports; rank 0 attaches the checkpoint (latest state + best
        # weights).
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                _save_state(tmp, model, optimizer, epoch, current, teacher)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                {**metrics, "is_best": is_best, "resumed_from": start_epoch}, checkpoint=checkpoint
            )

    current = state or FitResult(best_epoch=-1, best={"emo": 0.0, "int": 0.0, "joint": -1.0})
    t = cfg.train
    fit(
        model,
        t,
        cfg.loss,
        device,
        train_batches=lambda e: iter_batches(
            train,
            per_rank_batch,
            True,
            cfg.seed + e,
            t.bucket_by_length,
            rows=_rank_rows(train, cfg, rank, world, cfg.seed + e),
        ),
        val_batches=lambda: iter_batches(val, 2 * t.batch_size, False, 0, t.bucket_by_length),
        class_weights=class_weights_for(cfg, train),
        on_epoch=report,
        start_epoch=start_epoch,
        optimizer=optimizer,
        state=current,
        augment=augment.for_run(cfg.augment, train),
        pool_batches=None
        if pool is None
        else lambda seed: iter_batches(
            pool, pool_batch_size(cfg, world), True, seed + 7919 * rank, t.bucket_by_length
        ),
        consistency=cfg.consistency,
        teacher=teacher,
    )


def _rank_rows(
    train: PackedSplit, cfg: ExperimentConfig, rank: int, world: int, seed: int
) -> np.ndarray:
    """This rank's rows of this epoch (the epoch's draw of pool rows, then dealt to the ranks)."""
    rows = epoch_rows(train, cfg.pseudo.epoch_pool_ratio, seed)
    rows = np.arange(len(train)) if rows is None else rows
    return rows[shard_rows(len(rows), rank, world, seed)]


def _read_pool_shard(cfg: ExperimentConfig) -> PackedSplit:
    """This worker's rows of the unlabelled pool: its Ray Data shard (`get_dataset_shard`), read
    once into memory and cycled by the engine (a streaming split must be consumed in lockstep
    by every worker, which an endless pool iterator would not be)."""
    import pyarrow as pa
    import ray.train

    shard = ray.train.get_dataset_shard("pool")
    tables = list(shard.iter_batches(batch_size=256, batch_format="pyarrow"))
    if not tables or not sum(t.num_rows for t in tables):
        raise ValueError("online consistency: this worker's shard of the pool is empty")
    return table_to_packed(pa.concat_tables(tables), cfg.data.modalities)


def pool_dataset(cfg: ExperimentConfig):
    """The unlabelled pool's packed shards as a Ray Data dataset (split across the workers by Ray
    Train's DataConfig, equal row counts per worker)."""
    import ray.data

    files = shard_files(pack_split(cfg.data, UNLABELED))
    ds = ray.data.read_parquet(
        [str(f) for f in files], columns=packed_columns(cfg.data.modalities, labels=False)
    )
    return ds.limit(cfg.pseudo.max_rows) if cfg.pseudo.max_rows else ds


def epoch_stream():
    """(callback, queue): a Train V2 `UserCallback` (it runs on the Train controller) that puts
    rank 0's
    report of every epoch on a Ray queue, which the driver drains while `fit()` runs."""
    import ray
    from ray.train import UserCallback
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    class EpochStream(UserCallback):
        def __init__(self, queue: Queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint):
            self.queue.put(dict(metrics[0]))

    # The queue's actor lives on the driver's node: placed anywhere, it went down with a lost
    # worker node and took fit() with it (seen in the multi-node test). soft: a driver whose node
    # cannot host actors (Ray Client) still gets a queue elsewhere.
    here = ray.get_runtime_context().get_node_id()
    queue = Queue(
        actor_options={
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=True),
        }
    )
    return EpochStream(queue), queue


def build_trainer(
    cfg: ExperimentConfig,
    loop_config: dict,
    storage: Path | str,
    callbacks: list | None = None,
    datasets: dict | None = None,
):
    """TorchTrainer from config: workers, CPUs/GPUs per worker, failure and checkpoint policy.

    `callbacks` go to Train's RunConfig (a Tune trial passes TuneReportCallback;
        meiju_ray.distributed.tune);
    `storage` may also be a URI string such as s3://bucket/prefix (shared by all nodes)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name="train",
            storage_path=str(storage.resolve()) if isinstance(storage, Path) else storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=s.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )


def run_train(
    cfg: ExperimentConfig,
    extra_train: PackedSplit | None = None,
    on_epoch: EpochCallback | None = None,
    init_from: Path | None = None,
) -> dict:
    """`meiju-ray train`: in this process when scaling.num_workers == 0, else on Ray Train workers.
    Both write the same outputs (checkpoint/, metrics.json, history.json, config.yaml).
    `init_from`: a checkpoint directory whose weights the model starts from."""
    if cfg.pretrain.epochs > 0 and init_from is None:
        log.warning(
            "pretrain.epochs=%d: pre-training is a stage of `pipeline`; this run starts from "
            "scratch (run `pipeline`, or start from its <output_dir>/pretrain/checkpoint)",
            cfg.pretrain.epochs,
        )
    if cfg.scaling.num_workers >= 1:
        return run_distributed(cfg, extra_train, on_epoch, init_from)
    return run_local(cfg, extra_train, on_epoch, init_from)


def run_distributed(
    cfg: ExperimentConfig,
    extra_train: PackedSplit | None = None,
    on_epoch: EpochCallback | None = None,
    init_from: Path | None = None,
) -> dict:
    """Driver side of `meiju-ray train` with scaling.num_workers >= 1; same outputs as local
    mode."""
    with locked_dir(prepare_output(cfg)):
        return _run_distributed(cfg, extra_train, on_epoch, init_from)


def _run_distributed(cfg, extra_train, on_epoch, init_from) -> dict:
    import ray

    from meiju_ray.distributed.cluster import init_ray

    out = Path(cfg.output_dir)
    init_ray(cfg.ray)
    train, val = load_train_val(cfg, extra_train)
    initial = None if init_from is None else ray.put(initial_weights(init_from))
    loop_config = {
        "cfg": cfg.to_dict(),
        "train": ray.put(train),
        "val": ray.put(val),
        "init": initial,
        "init_path": str(init_from),
        "init_partial": init_from is not None and is_backbone(init_from),
    }
    log.info(
        "Ray Train: starting %d workers x %g CPU%s on %d training rows (the worker group and the "
        "process group take a while to start)",
        cfg.scaling.num_workers,
        cfg.scaling.cpus_per_worker,
        " + GPU" if cfg.scaling.use_gpu else "",
        len(train),
    )
    # [4] Fit on the cluster. Ray Train restores a run whose storage directory already holds
    # checkpoints,
    # so a second `train` into the same output_dir would silently hand back the first run's results
    # (whatever the new config says). Each call is a fresh run; worker failures inside it still
    # resume.
    storage = out / "ray_train"
    if storage.exists():
        log.info(
            "removing the previous run's Ray Train state at %s (a new run starts from scratch)",
            storage,
        )
        shutil.rmtree(storage)
    stream, queue = epoch_stream()
    done = threading.Event()

    log_epoch = EpochLog(cfg.train.epochs)

    def drain() -> None:  # epoch lines and on_epoch (e.g. MLflow) while the workers train
        while not (done.is_set() and queue.empty()):
            try:
                m = queue.get(timeout=0.5)
            except Exception:  # ray.util.queue.Empty: nothing reported yet
                continue
            log_epoch(int(m["epoch"]), m, bool(m["is_best"]))
            if on_epoch:
                on_epoch(int(m["epoch"]), m, bool(m["is_best"]))

    reader = threading.Thread(target=drain, name="epoch-stream", daemon=True)
    reader.start()
    try:
        datasets = {"pool": pool_dataset(cfg)} if cons.is_active(cfg.consistency) else None
        result = build_trainer(cfg, loop_config, storage, [stream], datasets).fit()
    except SystemExit:
        # only Ray Train's own SIGINT handler exits from inside fit(): after it has aborted the
        # run on Ctrl-C, so callers see the interrupt (exit 130, MLflow runs KILLED)
        raise KeyboardInterrupt("Ray Train run aborted") from None
    finally:
        done.set()
        reader.join()
        queue.shutdown()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    history = saved["history"]
    fit_result = FitResult(
        saved["best_epoch"],
        saved["best"],
        history,
        saved["best_state"],
        stopped_early=len(history) < cfg.train.epochs,
    )
    n_extra = 0 if extra_train is None else len(extra_train)
    return write_outputs(
        cfg,
        fit_result,
        train,
        val,
        {
            "n_pseudo": n_extra,
            "num_workers": cfg.scaling.num_workers,
            "resumed_from_epoch": int(result.metrics.get("resumed_from", 0)),
        },
    )
