#!/usr/bin/env bash
# The main job on the embedded default: set up (if needed), write a synthetic world in the
# official MEIJU Track 1 layout (once), then run the whole pipeline on a local Ray cluster with a
# local MLflow store: reference -> teacher -> Ray Data pseudo-labels -> student -> submission.csv.
# Extra arguments are config overrides, e.g.:  bash scripts/demo.sh pseudo.threshold=0.9
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Ray's environment defaults (token authentication on) are set by meiju_ray.distributed.cluster
WORLD=worlds/demo_small
if [ ! -f "$WORLD/world.json" ]; then
  meiju-ray synth "$WORLD" --seed 0 --scale 0.4 --unlabeled 3000 --dims small
fi
meiju-ray pipeline experiments/demo.yaml "$@"
