"""Inner ring: the training engine, checkpoints, in-process training, inference, metrics, the
logistic-regression reference. Ray Train drives the same engine from
`meiju_ray.distributed.train`."""
