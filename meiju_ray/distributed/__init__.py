"""Outer ring, Ray: the local cluster or an attached one, Ray Train, Ray Data pseudo-labelling,
Ray Tune sweeps, Ray Data text extraction. Everything here is glue around the inner ring."""

from meiju_ray.distributed.cluster import apply_env_defaults

apply_env_defaults()  # before anything here imports Ray (it reads RAY_AUTH_MODE on import)
