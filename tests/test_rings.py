"""The package's two rings, enforced by folder, and no import cycles.

Inner ring: every module outside `distributed/`, `tracking/` (which also holds the Python API,
`tracking/api.py`), `pipeline.py` and `cli.py`. It must never import Ray or MLflow, directly or
through another package module, at module level or inside a function. The check reads the source
(ast), so it sees imports that only run when a function is called; there is no hand-kept list of
modules.

The package's own `__init__` is the front door of both rings: its entry points load `tracking.api`
on first use. It is checked at run time instead: `import meiju_ray` (and `dir()`) loads no Ray,
MLflow or torch. An inner module that imported the package itself would still be caught (the chain
runs on through `__init__` into `tracking.api`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import meiju_ray

PACKAGE = Path(meiju_ray.__file__).resolve().parent
OUTER_DIRS = ("distributed", "tracking")
OUTER_MODULES = ("pipeline", "cli")
FORBIDDEN = ("ray", "mlflow")


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: Path) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def is_outer(name: str, root: str) -> bool:
    """Outer-ring modules, and the package's `__init__` (the front door: lazy entry points)."""
    rest = name.split(".")[1:]
    if not rest:
        return True
    return rest[0] in OUTER_DIRS or (len(rest) == 1 and rest[0] in OUTER_MODULES)


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module an import statement anywhere in the file names (also inside functions); for
    `from pkg import x` also pkg.x when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """{package module: the package modules and external top-level packages it imports}."""
    modules = package_modules(package)
    root = package.name
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in imports_of(path, name, modules):
            if imported.split(".")[0] == root:
                if imported in modules and imported != name:
                    edges.add(imported)
            else:
                edges.add(imported.split(".")[0])
        graph[name] = edges
    return graph


def ring_violations(
    package: Path, forbidden: tuple[str, ...] = FORBIDDEN, starts: list[str] | None = None
) -> dict[str, list[str]]:
    """{inner module (or each of `starts`): the import chain that reaches a forbidden package}."""
    graph = import_graph(package)
    root = package.name
    bad: dict[str, list[str]] = {}
    for start in starts or graph:
        if starts is None and is_outer(start, root):
            continue
        seen, todo = {start}, [[start]]
        while todo and start not in bad:
            chain = todo.pop()
            for nxt in sorted(graph.get(chain[-1], ())):
                if nxt in forbidden:
                    bad[start] = chain + [nxt]
                    break
                if nxt in graph and nxt not in seen:
                    seen.add(nxt)
                    todo.append(chain + [nxt])
    return bad


def import_cycles(package: Path) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    graph = {
        k: {v for v in vs if v in import_graph_keys(package)}
        for k, vs in import_graph(package).items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def import_graph_keys(package: Path) -> set[str]:
    return set(package_modules(package))


# ---- the checks on the real package ------------------------------------------------------------


def test_inner_ring_never_imports_ray_or_mlflow():
    bad = ring_violations(PACKAGE)
    assert not bad, "inner-ring modules reach Ray/MLflow: " + "; ".join(
        " -> ".join(chain) for chain in bad.values()
    )


def test_no_import_cycles_inside_the_package():
    assert import_cycles(PACKAGE) == []


def test_model_maths_does_not_import_pyarrow():
    """The network and losses run inside Ray Train workers and notebooks without the data layer."""
    assert (
        ring_violations(
            PACKAGE, ("pyarrow",), ["meiju_ray.model.network", "meiju_ray.model.losses"]
        )
        == {}
    )
    assert ring_violations(PACKAGE, ("pyarrow",), ["meiju_ray.data.batching"])  # control: it does


def test_every_folder_is_one_ring():
    """The layout the README describes: inner folders, two outer folders, two outer modules."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"distributed", "tracking"} <= folders
    assert {"data", "model", "train", "pseudo", "sweep", "features"} <= folders
    inner = [n for n in package_modules(PACKAGE) if not is_outer(n, "meiju_ray")]
    assert "meiju_ray.train.engine" in inner and "meiju_ray.distributed.train" not in inner


def test_importing_the_inner_ring_loads_no_ray_or_mlflow():
    """The same property at run time: import every inner module in a fresh interpreter."""
    inner = [n for n in package_modules(PACKAGE) if not is_outer(n, "meiju_ray")]
    code = (
        "import importlib, json, sys\n"
        f"for name in {inner!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('ray', 'mlflow'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_importing_the_package_is_cheap():
    """`import meiju_ray` and listing its entry points load no Ray, MLflow or torch; the entry
    points named like submodules still reach those submodules' attributes."""
    code = (
        "import json, sys\n"
        "import meiju_ray\n"
        "names = dir(meiju_ray)\n"
        "assert callable(meiju_ray.train) and callable(meiju_ray.pipeline), names\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'torch'))\n"
        "import meiju_ray.train.checkpoint as ck\n"
        "assert meiju_ray.train.checkpoint is ck and ck.__name__ == 'meiju_ray.train.checkpoint'\n"
        "print(json.dumps([names, loaded]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"train", "pipeline", "tune", "evaluate", "predict", "load_config"} <= set(names)
    assert loaded == []


# ---- controls: the checkers do report what they look for ---------------------------------------


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "meiju_ray"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_ring_check_sees_an_import_inside_a_function_two_modules_away(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "train/__init__.py": "",
            "train/engine.py": "from meiju_ray.train import helper\n",
            "train/helper.py": "def f():\n    import ray.train\n",
            "distributed/__init__.py": "",
            "distributed/glue.py": "import ray\n",  # the outer ring may
        },
    )
    bad = ring_violations(pkg)
    assert bad["meiju_ray.train.engine"] == [
        "meiju_ray.train.engine",
        "meiju_ray.train.helper",
        "ray",
    ]
    assert "meiju_ray.distributed.glue" not in bad


def test_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "a.py": "from meiju_ray import b\n",
            "b.py": "def g():\n    from meiju_ray.a import x\n",
            "c.py": "import meiju_ray.a\n",
        },
    )
    assert import_cycles(pkg) == [["meiju_ray.a", "meiju_ray.b"]]
