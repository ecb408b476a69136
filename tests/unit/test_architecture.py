"""The dependency rule: domain/ and projections/ never import infrastructure/ or interfaces/.

Every ``.py`` file is parsed with ``ast`` (imports inside functions and ``TYPE_CHECKING``
blocks count too); ``importlib.import_module("...")`` and ``__import__("...")`` with a literal
name are caught as well.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTER_LAYERS = frozenset({"infrastructure", "interfaces"})
DOMAIN_MAY_IMPORT = frozenset({"domain", "eventsourcing", "__future__"}) | frozenset(
    sys.stdlib_module_names
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(
    source: str, module: str, *, is_package: bool = False
) -> list[tuple[int, str]]:
    """Every absolute module name ``source`` imports, with its line number."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                up = node.level - 1
                if up > len(package) or (up == len(package) and not node.module):
                    # Relative import beyond the top-level package: name what it tries.
                    found.extend((node.lineno, alias.name) for alias in node.names)
                    continue
                base = ".".join([*package[: len(package) - up], *filter(None, [node.module])])
            if node.module is None:
                found.extend(
                    (node.lineno, f"{base}.{alias.name}".lstrip(".")) for alias in node.names
                )
            else:
                found.append((node.lineno, base))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (
                    isinstance(node.func, ast.Name)
                    and node.func.id in {"__import__", "import_module"}
                )
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(path: Path, banned: frozenset[str], root: Path = ROOT) -> list[str]:
    source = path.read_text(encoding="utf-8")
    module = module_name(path, root)
    imports = imported_modules(source, module, is_package=path.name == "__init__.py")
    return [
        f"{path.relative_to(root).as_posix()}:{line} imports {name}"
        for line, name in imports
        if name.split(".")[0] in banned
    ]


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


DOMAIN_FILES = python_files("domain")
PROJECTION_FILES = python_files("projections")


def test_packages_are_found() -> None:
    assert ROOT / "domain" / "credits.py" in DOMAIN_FILES
    assert ROOT / "domain" / "services" / "ledger.py" in DOMAIN_FILES
    assert ROOT / "projections" / "ledger.py" in PROJECTION_FILES


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_does_not_import_outer_layers(path: Path) -> None:
    assert violations(path, OUTER_LAYERS) == []


@pytest.mark.parametrize("path", PROJECTION_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_projections_do_not_import_outer_layers(path: Path) -> None:
    assert violations(path, OUTER_LAYERS) == []


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_imports_only_stdlib_eventsourcing_and_itself(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    imports = imported_modules(source, module_name(path), is_package=path.name == "__init__.py")
    foreign = [
        f"line {line}: {name}"
        for line, name in imports
        if name.split(".")[0] not in DOMAIN_MAY_IMPORT
    ]
    assert foreign == []


# ------------------------------------------------------- the checker itself can fail

FLAGGED = [
    "import infrastructure",
    "import infrastructure.settings as s",
    "import os, interfaces.bootstrap",
    "from infrastructure import settings",
    "from interfaces.bootstrap import bootstrap",
    "from infrastructure.db.sql import *",
    "def f():\n    from infrastructure.db.sql import x\n    return x",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from interfaces import cli",
    "import importlib\nimportlib.import_module('infrastructure.settings')",
    "from importlib import import_module\nimport_module('interfaces')",
    "__import__('infrastructure')",
    "from .... import infrastructure",  # beyond the top-level package
]

NOT_FLAGGED = [
    "import domain.money",
    "from domain import guardrails",
    "from eventsourcing.domain import Aggregate",
    "import infrastructure_tools",
    "from interfacesx import y",
    "NAME = 'infrastructure'",
    "from . import money",
    "from ..errors import DomainError",
    "from .infrastructure import helper",  # domain.services.infrastructure, not the layer
]


@pytest.mark.parametrize("source", FLAGGED)
def test_checker_flags_outer_layer_imports(source: str) -> None:
    names = [name for _, name in imported_modules(source, "domain.services.ledger")]
    assert any(name.split(".")[0] in OUTER_LAYERS for name in names), names


@pytest.mark.parametrize("source", NOT_FLAGGED)
def test_checker_accepts_inner_imports(source: str) -> None:
    names = [name for _, name in imported_modules(source, "domain.services.ledger")]
    assert not any(name.split(".")[0] in OUTER_LAYERS for name in names), names


def test_relative_imports_resolve_against_the_package() -> None:
    source = "from . import money\nfrom ..errors import DomainError\nfrom .x import y"
    assert imported_modules(source, "domain.services.ledger") == [
        (1, "domain.services.money"),
        (2, "domain.errors"),
        (3, "domain.services.x"),
    ]
    assert imported_modules("from . import credits", "domain", is_package=True) == [
        (1, "domain.credits")
    ]


def test_violations_reports_file_and_line(tmp_path: Path) -> None:
    probe = tmp_path / "domain" / "services" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "import os\n\nfrom infrastructure.settings import load_settings\n"
        "from ...interfaces import cli\n",
        encoding="utf-8",
    )
    assert violations(probe, OUTER_LAYERS, root=tmp_path) == [
        "domain/services/probe.py:3 imports infrastructure.settings",
        "domain/services/probe.py:4 imports interfaces",
    ]
