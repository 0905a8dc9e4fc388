"""The inner ring (data, model, training, inference) must not pull in Ray, MLflow or (for the model
maths) pyarrow: those are outer-ring dependencies, imported only where they are used."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import meiju_ray

PACKAGE = Path(meiju_ray.__file__).resolve().parent
INNER_RING = ["config", "labels", "layout", "packing", "batching", "model", "losses", "metrics", "engine",
              "checkpoint", "fileio", "synth", "training", "inference"]
FORBIDDEN = ("ray", "mlflow")


def test_inner_ring_imports_neither_ray_nor_mlflow():
    code = (
        "import importlib, json, sys\n"
        f"for name in {INNER_RING!r}:\n"
        "    importlib.import_module('meiju_ray.' + name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
        "print(json.dumps(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"inner-ring import pulled in: {loaded[:10]}"


def test_subprocess_check_can_see_an_outer_import():
    """Control: the same probe does report a forbidden module when one is imported."""
    code = ("import sys, types, json\n"
            "sys.modules['mlflow'] = types.ModuleType('mlflow')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout.strip()) == ["mlflow"]


# ---- static check: model maths never imports pyarrow, directly or through the package ---------------

def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative import inside the package
                base = "meiju_ray" + (("." + node.module) if node.module else "")
            else:
                base = node.module or ""
            names.add(base)
            # `from meiju_ray import checkpoint` imports the submodule meiju_ray.checkpoint
            if base == "meiju_ray":
                names.update(f"meiju_ray.{alias.name}" for alias in node.names)
    return names


def module_path(name: str) -> Path | None:
    if name == "meiju_ray":
        return PACKAGE / "__init__.py"
    if not name.startswith("meiju_ray."):
        return None
    path = PACKAGE / (name.split(".", 1)[1].replace(".", "/") + ".py")
    return path if path.is_file() else None


def transitive_imports(module: str) -> dict[str, str]:
    """{imported module: the package module that imports it}, following imports inside meiju_ray."""
    seen, found, todo = set(), {}, [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        path = module_path(current)
        if path is None:
            continue
        for name in imported_modules(path):
            found.setdefault(name, current)
            if name.startswith("meiju_ray"):
                todo.append(name)
    return found


@pytest.mark.parametrize("module", ["model", "losses", "metrics"])
def test_model_maths_does_not_import_pyarrow(module):
    found = transitive_imports(f"meiju_ray.{module}")
    bad = {name: via for name, via in found.items() if name.split(".")[0] == "pyarrow"}
    assert not bad, f"meiju_ray.{module} imports pyarrow via {bad}"
    assert not {n for n in found if n.split(".")[0] in FORBIDDEN}


def test_static_check_finds_pyarrow_where_it_is_used():
    """Control: packing reads Parquet, so the checker must report pyarrow there (and via batching)."""
    assert "pyarrow" in imported_modules(PACKAGE / "packing.py")
    assert any(n.split(".")[0] == "pyarrow" for n in transitive_imports("meiju_ray.batching"))
