"""Inner ring: the search-space grammar, trial configs, and sweep report tables and plots.
Ray Tune runs the sweep from `meiju_ray.distributed.tune`."""
