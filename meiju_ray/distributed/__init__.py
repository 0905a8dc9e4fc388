"""Outer ring, Ray: the local cluster or an attached one, Ray Train, Ray Data pseudo-labelling,
Ray Tune sweeps, Ray Data text extraction. Everything here is glue around the inner ring."""
