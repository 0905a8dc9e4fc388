"""Outer ring, MLflow: the run tracker, sweep runs, the UI."""

import logging

from meiju_ray.distributed.cluster import apply_env_defaults

apply_env_defaults()  # tracking.sweep imports Ray Tune's MLflow callback: the env comes first

# a new sqlite store prints "Creating initial MLflow database tables..." and alembic's migration
# steps: bookkeeping, not progress; warnings and errors still show
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)
