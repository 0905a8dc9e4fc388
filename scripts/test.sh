#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests plus integration tests on a
# private local Ray cluster and a local MLflow store. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Ray / MLflow / HF environment defaults (Ray's token authentication stays on): tests/conftest.py
export RAY_TMPDIR="${RAY_TMPDIR:-$(mktemp -d /tmp/meiju-ray-XXXX)}"
python -m pytest "$@"
