"""Outer ring, MLflow: the run tracker, sweep runs, the UI."""

import logging
import os

from meiju_ray.distributed.cluster import apply_env_defaults

apply_env_defaults()  # tracking.sweep imports Ray Tune's MLflow callback: the env comes first

# a new sqlite store prints "Creating initial MLflow database tables..." and alembic's migration
# steps: bookkeeping, not progress; warnings and errors still show
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# every logged model reloads itself to check its input example, and a checkpoint URI downloads a
# few files: MLflow's per-file "Downloading artifacts" bars are noise there (set it to true to
# see them)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
