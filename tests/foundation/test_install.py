"""A plain install serves: ``pip install .`` without extras brings every module the shipped code imports
and every file it opens (templates, migrations), so ``caducee init`` then ``caducee serve`` work."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.instance import Instance

ROOT = Path(__file__).resolve().parents[2]
# What a checkout may hold besides the sources (.gitignore): not part of what pip builds from.
NOT_SOURCE = {".git", ".venv", "build", "dist", "demo", "data", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]).lower()


def shipped_files(project: dict[str, object]) -> list[Path]:
    setuptools = project["tool"]["setuptools"]  # type: ignore[index]
    files = [ROOT / f"{module}.py" for module in setuptools["py-modules"]]
    for pattern in setuptools["packages"]["find"]["include"]:
        # Links followed, as setuptools does: mailserver/db/migrations is the top-level alembic/.
        for directory, _dirs, names in os.walk(ROOT / pattern.rstrip("*"), followlinks=True):
            files += sorted(Path(directory) / n for n in names if n.endswith(".py"))
    return files


def test_every_import_of_the_shipped_code_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = {_name(r) for r in project["project"]["dependencies"]}
    files = shipped_files(project)
    ours = {f.relative_to(ROOT).parts[0].removesuffix(".py") for f in files}
    owners = importlib.metadata.packages_distributions()
    undeclared: dict[str, list[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {m.split(".")[0] for m in modules}:
                if top in sys.stdlib_module_names or top in ours or top == "__future__":
                    continue
                if not {_name(d) for d in owners.get(top, [top])} & declared:
                    undeclared.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(files) > 100 and {"mailserver", "directory", "smime", "config", "cli"} <= ours
    assert not undeclared, f"imported by shipped code but not in [project] dependencies: {undeclared}"


def _copy_ignoring(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in NOT_SOURCE or n.endswith(".egg-info")}


@pytest.mark.slow
def test_a_plain_install_in_a_fresh_virtualenv_serves(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_copy_ignoring)  # pip builds in the tree it is given
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    r = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    where = subprocess.run(
        [str(python), "-c", "import mailserver, pytest"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "No module named 'pytest'" in where.stderr  # no test extra: the plain dependencies only
    inst = Instance.init(str(venv / "bin" / "caducee"), tmp_path / "data")
    inst.start()
    try:
        inst.check_every_listener()
    finally:
        code = inst.stop()
    assert code == 0, "".join(inst.lines)
    assert all(isinstance(json.loads(line), dict) for line in inst.lines)
