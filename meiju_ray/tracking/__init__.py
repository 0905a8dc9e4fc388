"""Outer ring, MLflow: the run tracker, sweep runs, the UI."""

from meiju_ray.distributed.cluster import apply_env_defaults

apply_env_defaults()  # tracking.sweep imports Ray Tune's MLflow callback: the env comes first
