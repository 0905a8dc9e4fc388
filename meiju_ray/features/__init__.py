"""Inner ring: text encoders (transformers), transcript files, corpus importers. No Ray: the
Ray Data extraction job is `meiju_ray.distributed.extract_text`."""
