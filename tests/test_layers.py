"""The layering rule: ``seekwatch`` (and the benchmarks) on top; ``inference``, ``monitor``
and ``dashboards`` side by side, never importing each other; ``contracts`` at the bottom,
importing none of them. import-linter checks every import statement, including the ones
inside functions, against the contract in ``pyproject.toml``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.exists():
        return str(exe)
    found = shutil.which("lint-imports")
    if not found:
        pytest.fail("lint-imports not found: install the test extras (pip install -e '.[test]')", pytrace=False)
    return found


def _run(config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([_lint_imports(), "--config", str(config), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_only_point_down():
    res = _run(ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_the_rule_catches_a_sideways_import(tmp_path):
    """The contract is not vacuous: the same layers over a copy of the tree with one import
    from the dashboard into the monitor are reported broken."""
    tree = tmp_path / "tree"
    for pkg in ("seekwatch", "benchmarks", "inference", "monitor", "dashboards", "contracts"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    with open(tree / "dashboards" / "app.py", "a", encoding="utf-8") as fh:
        fh.write("\n\ndef _sideways():\n    import monitor.alerting.model  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run([_lint_imports(), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "dashboards is not allowed to import monitor" in res.stdout


def test_one_name_for_one_thing():
    """No two classes of the product share a name: the inference engine's ``EngineError``, the
    log store's ``StoreError``/``LaunchError`` and the dashboard's ``DashboardSourceError``
    are different things, and so are ``ShipStats``, ``LoadStats`` and ``ParseStats``."""
    import ast
    from collections import defaultdict

    where = defaultdict(list)
    for pkg in ("contracts", "inference", "monitor", "dashboards", "seekwatch"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    where[node.name].append(str(path.relative_to(ROOT)))
    assert {n: p for n, p in where.items() if len(p) > 1} == {}


def test_no_sideways_import_by_name():
    """import-linter sees import statements; an ``importlib.import_module("monitor...")`` from
    the dashboard would hide a sideways dependency from it. None of the three middle packages
    names another one in a dynamic import."""
    import ast

    middle = ("inference", "monitor", "dashboards")
    found = []
    for pkg in middle:
        others = tuple(o for o in middle if o != pkg)
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                        "import_module", "__import__"):
                    for arg in ast.walk(node):
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and \
                                arg.value.split(".")[0] in others:
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {arg.value}")
                if isinstance(node, (ast.Tuple, ast.List)) and any(
                        isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.split(".")[0] in others
                        and "." in e.value and e.value.replace(".", "").replace("_", "").isalnum() for e in node.elts):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: module names of another part")
    assert found == []
