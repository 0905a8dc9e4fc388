#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests plus integration tests on a
# private local Ray cluster and a local MLflow store. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_DEDUP_LOGS=0 RAY_TRAIN_ENABLE_PRINT_PATCH=0
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_TMPDIR="${RAY_TMPDIR:-$(mktemp -d /tmp/meiju-ray-XXXX)}"
python -m pytest "$@"
