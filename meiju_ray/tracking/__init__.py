"""Outer ring, MLflow: the run tracker, sweep runs, the UI."""
