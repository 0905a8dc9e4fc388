"""meiju_ray: joint emotion + intent recognition for MEIJU'25 Track 1, distributed with Ray.

The Python API (meiju_ray.tracking.api; README "From Python"):

    import meiju_ray
    cfg = meiju_ray.load_config("experiments/smoke.yaml", {"data.root": "worlds/demo"})
    result = meiju_ray.pipeline(cfg)            # train, tune, pseudo_label, evaluate alike
    meiju_ray.predict(result["final_model"], features)   # DataFrame: labels + probabilities

`import meiju_ray` is cheap: the entry points load on first use (they import Ray, MLflow and torch
only when called). `meiju_ray.train` and `meiju_ray.pipeline` call the entry points and hand any
other attribute to the subpackage and module of the same names, which import as usual.

The inner ring (config, labels, layout, packing, batching, model, losses, metrics, engine,
checkpoint, synth) imports only torch/numpy/pyarrow/yaml. The outer ring (Ray Data, Train, Tune,
MLflow, CLI, this API) is thin and lives in its own modules.
"""

import importlib
import inspect
import sys
import types

__version__ = "0.1.0"
__all__ = ["evaluate", "load_config", "pipeline", "predict", "pseudo_label", "train", "tune"]
SHARED_NAMES = ("train", "pipeline")  # entry points named like a submodule of the package


def _entry_point(name: str):
    # outer ring: loaded on first use, never by `import meiju_ray`
    from meiju_ray.tracking import api

    return getattr(api, name)


class _EntryPoint:
    """An entry point that shares its name with a submodule (meiju_ray/train/,
    meiju_ray/pipeline.py): calling it runs meiju_ray.tracking.api.<name>; any other attribute is
    the submodule's, so `meiju_ray.pipeline.run_pipeline` and `import meiju_ray.train.engine as e`
    keep working. Its signature and docstring are the entry point's."""

    def __init__(self, name: str):
        self._name = self.__name__ = self.__qualname__ = name
        self.__module__ = "meiju_ray"

    def __call__(self, *args, **kwargs):
        return _entry_point(self._name)(*args, **kwargs)

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(f"meiju_ray.{self._name}"), attr)

    @property
    def __doc__(self):
        return _entry_point(self._name).__doc__

    @property
    def __wrapped__(self):
        return _entry_point(self._name)

    @property
    def __signature__(self):
        return inspect.signature(_entry_point(self._name))

    def __repr__(self) -> str:
        return f"<meiju_ray entry point {self._name}() (also the submodule meiju_ray.{self._name})>"


_SHARED = {name: _EntryPoint(name) for name in SHARED_NAMES}


class _Package(types.ModuleType):
    """The package module: the entry points win over the same-named submodules, which the import
    system sets as attributes of the package."""

    def __getattribute__(self, name: str):
        if name in __all__:
            return _SHARED[name] if name in _SHARED else _entry_point(name)
        return super().__getattribute__(name)


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])


sys.modules[__name__].__class__ = _Package
