#!/usr/bin/env bash
# Screenshots of the MLflow UI of this checkout's store (runs/mlflow.db), taken with headless
# Chromium (Debian package `chromium`: apt-get install -y --no-install-recommends chromium), so the
# browser check of docs/ui.md can be repeated by anyone. Needs a run first (bash scripts/demo.sh).
#   bash scripts/ui_screenshots.sh [experiment name (default meiju_ray)] [out dir (runs/ui_shots)]
set -euo pipefail
cd "$(dirname "$0")/.."
EXPERIMENT=${1:-meiju_ray}
OUT=${2:-runs/ui_shots}
PORT=${PORT:-5077}
command -v chromium >/dev/null || { echo "error: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
[ -f runs/mlflow.db ] || { echo "error: runs/mlflow.db not found: run bash scripts/demo.sh first" >&2; exit 2; }
EXP_ID=$(.venv/bin/python - "$EXPERIMENT" <<'PY'
import sys
from mlflow import MlflowClient
exp = MlflowClient("sqlite:///runs/mlflow.db").get_experiment_by_name(sys.argv[1])
print(exp.experiment_id if exp else "")
PY
)
[ -n "$EXP_ID" ] || { echo "error: no experiment '$EXPERIMENT' in runs/mlflow.db" >&2; exit 2; }
mkdir -p "$OUT"
.venv/bin/meiju-ray ui --port "$PORT" > "$OUT/ui.log" 2>&1 &
UI=$!
trap 'kill $UI 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 2
done
shot() {  # $1 = file name, $2 = URL fragment after #/
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1400,900 --virtual-time-budget=20000 \
    --screenshot="$OUT/$1" "http://127.0.0.1:$PORT/#/$2" 2>/dev/null
  echo "[ui] $OUT/$1  <- http://127.0.0.1:$PORT/#/$2"
}
shot runs.png "experiments/$EXP_ID/runs"
shot registry.png "models"
