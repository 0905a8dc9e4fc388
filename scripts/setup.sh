#!/usr/bin/env bash
# Create .venv (if missing) and install meiju_ray with its pinned dependencies.
# torch==2.13.0 is pinned in pyproject.toml; on a CPU-only machine it resolves to the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import meiju_ray, ray, mlflow, torch, pytest, av, cv2, opensmile, skimage" 2>/dev/null || [ "${MEIJU_REINSTALL:-0}" = 1 ]; then
  echo "[setup] installing meiju_ray and pinned dependencies (first time: ~2 minutes)"
  python -m pip install --quiet -e '.[test]'
fi
echo "[setup] ready: $(python -c 'import torch, ray, mlflow; print(f"torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}")')"
