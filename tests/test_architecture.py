"""The house's rules, checked over the real import graph and the real build.

Floors only look down: ground (settings, geodesy, cells, registry, names) imports nothing of ours;
ingest, models and gallery import only the ground and themselves; the core imports those; the HTTP API and
the workers sit on the core; the CLI, on top, may start either. No import circle, lazy imports included.
Every third-party import is declared in the extra of the users who run that code, and the wheel installs
one top-level package.
"""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GROUND = {"geoloc", "geoloc.settings", "geoloc.geodesy", "geoloc.cells", "geoloc.registry", "geoloc.names"}
PARTS = ("geoloc.ingest", "geoloc.models", "geoloc.gallery")
TOP = ("geoloc.search_api", "geoloc.workers")
# imports made lazily by code that only some users run: the extra that declares them
LAZY_EXTRAS = {
    ("geoloc.cli.service", "uvicorn"): "server",
    ("geoloc.crossval", "matplotlib"): "eval",
    ("geoloc.job_store", "redis"): "workers",
    ("geoloc.models.clip", "open_clip"): "clip",
    ("geoloc.models.clip", "huggingface_hub"): "clip",
    ("geoloc.search_api.errors", "kombu"): "workers",
    ("geoloc.task_queue", "celery"): "workers",
    ("geoloc.task_queue", "kombu"): "workers",
}
PACKAGE_EXTRAS = {"geoloc.search_api": "server", "geoloc.workers": "workers", "geoloc.gallery.server": "qdrant"}


def modules() -> dict[str, Path]:
    """Module name -> file, through the same folder mapping the build uses."""
    found = {}
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in the file names, at any depth (lazy imports count)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


def graph() -> dict[str, set[str]]:
    ours = modules()
    return {name: {n for n in imported_names(path) if n in ours and n != name} for name, path in ours.items()}


def floor(module: str) -> tuple[int, str]:
    """(height, room): imports may go to a lower height, or stay inside one room."""
    if module in GROUND:
        return 0, "ground"
    for part in PARTS:
        if module == part or module.startswith(part + "."):
            return 1, part
    for top in TOP:
        if module == top or module.startswith(top + "."):
            return 3, top
    if module == "geoloc.cli" or module.startswith("geoloc.cli."):
        return 4, "geoloc.cli"
    return 2, "core"


def test_floors_only_look_down():
    upward = []
    for module, imports in graph().items():
        height, room = floor(module)
        for target in imports:
            to_height, to_room = floor(target)
            if to_height > height or (to_height == height and to_room != room):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that cross floors or rooms:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    sorter = graphlib.TopologicalSorter(graph())
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _declared(extra: str | None) -> set[str]:
    project = PYPROJECT["project"]
    names = _requirement_names(project["dependencies"])
    if extra:
        names |= _requirement_names(project["optional-dependencies"][extra])
    return names


def _extra_of(module: str, top_level: str) -> str | None:
    if (module, top_level) in LAZY_EXTRAS:
        return LAZY_EXTRAS[(module, top_level)]
    for package, extra in PACKAGE_EXTRAS.items():
        if module == package or module.startswith(package + "."):
            return extra
    return None


def test_every_third_party_import_is_declared_where_it_is_needed():
    distributions = packages_distributions()
    stdlib = sys.stdlib_module_names
    missing = []
    for module, path in modules().items():
        for name in imported_names(path):
            top_level = name.split(".")[0]
            if top_level in stdlib or top_level == "geoloc" or top_level not in distributions:
                continue
            extra = _extra_of(module, top_level)
            wanted = {d.lower().replace("_", "-") for d in distributions[top_level]}
            if not wanted & _declared(extra):
                missing.append(f"{module} imports {top_level} ({', '.join(sorted(wanted))}): "
                               f"not in {'the base' if extra is None else f'[{extra}]'} dependencies")
    assert not missing, "\n".join(sorted(set(missing)))


def test_wheel_installs_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("geoloc-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"geoloc"}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"geoloc/models/backbone.py", "geoloc/gallery/edge.py", "geoloc/search_api/routes/query.py",
            "geoloc/workers/tasks.py", "geoloc/ingest/sources.py", "geoloc/cli/__init__.py"} <= names
