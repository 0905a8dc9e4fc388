"""Starting or attaching to Ray, and budgeting its CPUs so nothing deadlocks on small machines.

Local by default: a private cluster (`address="local"`) sized from config, with a bounded object
store (Ray's default takes ~30% of RAM). With `ray.address` / `--address` / `$RAY_ADDRESS` the same
code attaches to an existing cluster (a `ray start --head`, a `ray job submit` job, a cloud
cluster).
"""

from __future__ import annotations

import logging
import os
import threading

from meiju_ray.config import RayConfig

log = logging.getLogger("meiju_ray")

# Environment defaults measured to matter here (docs: ray-mlflow-notes §5, §8); set before Ray
# starts.
RAY_ENV_DEFAULTS = {
    # token authentication on (Ray 2.60's default for a cluster it starts; "token" also makes this
    # process's clients send ~/.ray/auth_token, which the first start writes)
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune's advice on slow result processing and state snapshots (read when ray.tune is
    # imported): about its own bookkeeping on a busy machine, nothing a sweep's user can act on
    "TUNE_WARN_THRESHOLD_S": "60",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def apply_env_defaults() -> None:
    """Set RAY_ENV_DEFAULTS where the user has not. Must run before `import ray`: Ray reads
    RAY_AUTH_MODE when it is imported, while the GCS it starts reads it from the environment, so a
    late setting leaves a token-checking GCS and a driver that sends no token."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def settle_after_interrupt(timeout: float = 60.0) -> None:
    """After a Ctrl-C: wait for Ray Data's executor threads, told to stop when the interrupted
    iteration unwound, to finish. One still running when the interpreter's exit shuts Ray down
    touches the shut-down core worker, and Ray then ends the process with status 1 instead of
    the 130 of an interrupt. `timeout` only bounds a thread that never stops."""
    for thread in threading.enumerate():
        if thread.name.startswith("StreamingExecutor-") and thread is not threading.main_thread():
            thread.join(timeout)


def quiet_ray_data(quiet: bool) -> None:
    """Ray Data's progress: its own bars on a TTY (a periodic log line otherwise), none when quiet;
    and none of its advice a CLI user cannot follow (`set DataContext...` lines)."""
    import ray.data
    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    # "Progress bars disabled. To enable, set `ray.data.DataContext...`": Ray logs it once per
    # process under this key; taking the key first keeps it quiet
    log_once("ray_data_progress_manager_disabled")
    # its issue detectors report "Found 1 issues. To disable issue detection, run DataContext..."
    # for long-running inference batches, which are normal here
    ctx.issue_detectors_config.detectors = []


# CPUs an actor pool must leave free for Ray Data's own tasks (see check_cpu_budget)
RESERVED_CPUS = 1.0
# set by init_ray when it started the private local cluster this process uses
_STARTED_LOCAL = False


def cluster_address(cfg: RayConfig, address: str | None = None) -> str:
    """The cluster to attach to ("" = start a private local one)."""
    target = address or cfg.address or os.environ.get("RAY_ADDRESS", "")
    return "" if target == "local" else target


def attached_to_cluster(cfg: RayConfig) -> bool:
    """True when work goes to a shared Ray cluster rather than a private local one started here."""
    import ray

    if cluster_address(cfg):
        return True
    return ray.is_initialized() and not _STARTED_LOCAL


def init_ray(cfg: RayConfig, address: str | None = None, quiet: bool = True) -> str:
    """Initialise Ray once per process; returns "local" or the address attached to."""
    global _STARTED_LOCAL
    import ray

    if ray.is_initialized():
        return "existing"
    target = cluster_address(cfg, address)
    if target:
        ray.init(address=target, log_to_driver=not quiet)
        log.info(
            "attached to Ray cluster at %s (%s CPUs)", target, ray.cluster_resources().get("CPU")
        )
        return target
    num_cpus = cfg.num_cpus or os.cpu_count() or 1
    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=cfg.object_store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=not quiet,
    )
    _STARTED_LOCAL = True
    protect_token_file()
    import ray.data

    quiet_ray_data(quiet)
    log.info("started a local Ray cluster with %d CPUs", num_cpus)
    return "local"


def protect_token_file() -> None:
    """Ray writes ~/.ray/auth_token readable by every local user (0644); make it the owner's."""
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
    try:
        if os.stat(path).st_uid == os.getuid():
            os.chmod(path, 0o600)
    except OSError:
        pass  # no token file (auth disabled by the user, or a token given as RAY_AUTH_TOKEN)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def check_cpu_budget(requested: float, what: str, leave: float = RESERVED_CPUS) -> None:
    """Refuse a request that would leave Ray Data's read/write tasks no CPU (a silent deadlock).

    Ray Data 2.60 starts every file read with a ListFiles task that asks for one whole CPU (its
    resources cannot be set), after the actor pool has taken its share: an actor pool holding more
    than cluster CPUs - 1 (e.g. 2 actors x 0.75 on 2 cores) hangs forever without an error."""
    total = cluster_cpus()
    if requested > total - leave + 1e-9:
        raise ValueError(
            f"{what} asks for {requested:g} CPUs but the Ray cluster has {total:g}; keep it below "
            f"{total - leave:g} so Ray Data's read/write tasks can run (they would wait forever)"
        )
