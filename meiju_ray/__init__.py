"""meiju_ray: joint emotion + intent recognition for MEIJU'25 Track 1, distributed with Ray.

The inner ring (config, labels, layout, packing, batching, model, losses, metrics, engine,
checkpoint, synth) imports only torch/numpy/pyarrow/yaml. The outer ring (Ray Data, Train, Tune,
MLflow, CLI) is thin and lives in its own modules.
"""

__version__ = "0.1.0"
