"""One composition root (issue 23): the doors get what they need injected, and read no SQL.

- No SQL in ``interfaces/``: every read goes through a query object in ``infrastructure/``
  (``LedgerQueries``, ``InstanceQueries``, ``PaymentQueries``, ``UserQueries``, ...).
- No borrowing through ``app.state``: ``interfaces/bootstrap.py`` builds the parts the doors
  share (``serving``) and hands them over (Litestar dependencies, constructors). The one
  place that writes ``app.state`` publishes the parts for tests and tools; nothing reads it.
- No door outside ``interfaces/http/`` imports an HTTP controller: shared request bodies
  and plain-data answers live in neutral modules.

Each check parses the source with ``ast``, so comments and docstrings do not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SQL = re.compile(
    r"\b(SELECT\s+\S|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|DATABASE|INDEX)"
    r"|ALTER\s+TABLE|DROP\s+TABLE)"
)
PUBLISHER = "interfaces/http/app.py"  # writes app.state for tests and tools, reads nothing


def _sources(*folders: str) -> list[tuple[str, ast.Module]]:
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "generated" in path.parts:
                continue
            found.append((path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())))
    return found


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring constants of the module, its classes and functions."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def sql_strings(tree: ast.Module) -> list[tuple[int, str]]:
    """String literals (f-string parts too) that read as SQL, docstrings aside."""
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and SQL.search(node.value)
        ):
            found.append((node.lineno, node.value[:60]))
    return found


def _is_app(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "app") or (
        isinstance(node, ast.Attribute) and node.attr == "app"
    )


def state_borrowing(tree: ast.Module, *, may_publish: bool) -> list[int]:
    """Lines that read ``app.state`` (or ``scope["app"]``); writing ``app.state.x = ...`` is
    allowed only where ``may_publish``."""
    written: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute):
                    written.add(id(target.value))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "state" and _is_app(node.value):
            if not (may_publish and id(node) in written):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and node.slice.value == "app"
        ):
            lines.append(node.lineno)
    return sorted(lines)


def controller_imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "interfaces.http.controllers"
        ):
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Import):
            found.extend(
                (node.lineno, a.name)
                for a in node.names
                if a.name.startswith("interfaces.http.controllers")
            )
    return found


def test_no_sql_in_interfaces() -> None:
    offenders = {path: hits for path, tree in _sources("interfaces") if (hits := sql_strings(tree))}
    assert offenders == {}, "SQL belongs in a query object under infrastructure/"


def test_no_door_borrows_from_app_state() -> None:
    offenders = {
        path: lines
        for path, tree in _sources("interfaces", "infrastructure")
        if (lines := state_borrowing(tree, may_publish=path == PUBLISHER))
    }
    assert offenders == {}, "inject what a door needs (interfaces/bootstrap.py), never app.state"


def test_only_http_imports_http_controllers() -> None:
    offenders = {
        path: hits
        for path, tree in _sources("interfaces", "infrastructure", "domain")
        if not path.startswith("interfaces/http/") and (hits := controller_imports(tree))
    }
    assert offenders == {}, "shared types live in neutral modules, not in a controller"


def test_the_checks_catch_what_they_look_for() -> None:
    """Each check fails on a sample of what it forbids (so it is not a test that cannot fail)."""
    sample = ast.parse(
        "def f(request, db):\n"
        "    rows = db.read().fetchall('SELECT id FROM users WHERE x = ?')\n"
        "    runtime = request.app.state.proxy\n"
        "    doors = scope['app'].state.agents\n"
        "    app.state.proxy = runtime\n"
    )
    assert [line for line, _ in sql_strings(sample)] == [2]
    assert state_borrowing(sample, may_publish=False) == [3, 4, 5]
    assert state_borrowing(sample, may_publish=True) == [3, 4]
    docs = ast.parse('"""SELECT x FROM y is documented here."""\nx = "DELETE session"\n')
    assert sql_strings(docs) == []
    imports = ast.parse("from interfaces.http.controllers.proxy import ProxyBody\n")
    assert controller_imports(imports) == [(1, "interfaces.http.controllers.proxy")]
