"""The layout DESIGN.md fixes: one namespace, imports one way, Prefect/MLflow only in flows."""

from __future__ import annotations

import ast
import tomllib

import pytest
from helpers import REPO

ORDER = ["records", "features", "models", "evaluation", "flows"]  # each may import only earlier ones


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", ORDER)
def test_imports_run_one_way(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "forewarn" and len(parts) > 1 and parts[1] not in allowed:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
            if parts[0] in ("prefect", "mlflow") and package != "flows":
                bad.append(f"{path.relative_to(REPO)} imports {name} (only flows/ may)")
            if parts[0] in ORDER:
                bad.append(f"{path.relative_to(REPO)} imports bare {name}; use forewarn.{name}")
    assert bad == []


def test_every_code_folder_is_a_listed_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = set()
    for top in ORDER:
        for folder in [REPO / top, *[p for p in (REPO / top).rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
            if any(folder.glob("*.py")) or any(folder.glob("*.yaml")) or any(folder.glob("*.j2")):
                found.add("forewarn." + ".".join(folder.relative_to(REPO).parts))
    assert found == listed


def test_required_top_level():
    for name in ("pyproject.toml", "flows", "features", "models", "evaluation", "tests", "records", "mlruns/.gitignore"):
        assert (REPO / name).exists(), name
    assert (REPO / "mlruns/.gitignore").read_text().split() == ["*", "!.gitignore"]
    assert not (REPO / "forewarn").exists()
