"""pyproject.toml declares every package that the library and the experiment scripts import at run time, and nothing
they do not use; requirements.txt pins each of them."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CODE = ("iqa_core", "deepssim", "distribution_measures", "zs_iqa", "dps", "experiments")
#: declared for their data files, never imported (iqa_core.baselines names them; iqa_core.weights finds the files
#: through importlib.util.find_spec)
DATA_ONLY = {"lpips": "lpips", "dists-pytorch": "DISTS_pytorch"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _normal(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0])


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in the code (at module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for package in CODE:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in CODE:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {_requirement_name(s) for s in specs} for name, specs in project["optional-dependencies"].items()}
    return {_requirement_name(s) for s in project["dependencies"]}, extras


def test_every_import_is_declared_and_every_dependency_used():
    runtime, extras = declared()
    optional = set().union(*(names for extra, names in extras.items() if extra != "dev"))
    distributions = importlib.metadata.packages_distributions()
    used = set()
    for module, files in imported_modules().items():
        owners = {_normal(d) for d in distributions.get(module, [])} or {_normal(module)}  # an extra not installed
        assert owners & (runtime | optional), f"{module} ({sorted(files)}) comes from {owners}: not in pyproject.toml"
        used |= owners
    assert runtime - used == set(DATA_ONLY), f"declared but never imported: {sorted(runtime - used - set(DATA_ONLY))}"
    baselines = (ROOT / "iqa_core" / "baselines.py").read_text()
    assert all(f'"{package}"' in baselines for package in DATA_ONLY.values())  # they are really read


def test_requirements_pin_every_runtime_dependency():
    runtime, _ = declared()
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pinned = {_requirement_name(line) for line in lines if line and not line.startswith("-")}
    assert runtime <= pinned, f"not in requirements.txt: {sorted(runtime - pinned)}"
