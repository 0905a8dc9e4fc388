"""Inner ring: the MEIJU on-disk layout, packed Parquet shards, padded batches, synthetic worlds."""
