"""Inner ring: pseudo-label selection and calibration, teacher inference on one pool shard,
pseudo-label files. Ray Data fans the per-shard code out in `meiju_ray.distributed.pseudo_label`."""
