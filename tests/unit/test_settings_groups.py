"""Grouped settings: one default per value, every documented variable read, groups load alone."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure import settings as settings_module
from infrastructure.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
GROUPS = list(dataclasses.fields(Settings))
# Readers whose ``default`` argument must come from a field: (function, index of ``default``).
READERS = {
    "_str": 2,
    "_bool": 2,
    "_int": 2,
    "_float": 2,
    "_choice": 2,
    "_usd": 2,
    "_url": 2,
    "_duration": 2,
    "_readable_file": 2,
    "_public_url": 1,
    "_markup": 1,
    "_guardrails": 1,
    "_sandbox_hosts": 1,
}


class ReadLog(dict[str, str]):
    """An environment that remembers every name asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def documented_names() -> set[str]:
    """The application's variables in ``.env.example`` (before the container stack's own)."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    app_part = text.split("# --- Container stack")[0]
    return set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", app_part, re.MULTILINE))


def read_names() -> set[str]:
    # REDIS_HOST makes the loader read the parts of a Redis URL too.
    env = ReadLog({"REDIS_HOST": "localhost"})
    Settings.from_env(env)
    return env.asked


def test_each_group_default_is_what_an_empty_environment_loads() -> None:
    loaded = load_settings({}, env_file=None)
    assert loaded == Settings()
    for group in GROUPS:
        kind = getattr(settings_module, str(group.type))  # annotations are strings here
        assert getattr(loaded, group.name) == kind(), group.name
        assert kind.from_env({}) == kind(), group.name


def test_every_documented_variable_is_read_and_every_read_one_documented() -> None:
    documented, read = documented_names(), read_names()
    assert len(documented) > 100  # the parse found the list
    assert documented - read == set(), "documented in .env.example but never read"
    assert read - documented == set(), "read but missing from .env.example"


@pytest.mark.parametrize("name", sorted(documented_names()))
def test_each_documented_variable_is_named_in_the_docs(name: str) -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    window = re.sub(r"_\d+[A-Z]+_", "_<WINDOW>_", name)  # GUARDRAILS_MAX_<WINDOW>_RATE
    pattern = re.compile(rf"\b({name}|{window})\b")
    assert any(pattern.search(p.read_text(encoding="utf-8")) for p in docs), name


def _reader_calls() -> Iterator[tuple[str, int, ast.expr]]:
    tree = ast.parse(Path(settings_module.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            index = READERS.get(node.func.id)
            if index is not None:
                yield node.func.id, node.lineno, node.args[index]


def test_the_loaders_write_no_default_of_their_own() -> None:
    """A default lives in its field only: every reader gets it from a field (``d.port``) or a
    named class constant, never a literal (``""`` means 'unset': the value is derived)."""
    calls = list(_reader_calls())
    assert len(calls) > 100  # the walk found the readers
    literals = [
        (name, line, ast.unparse(arg))
        for name, line, arg in calls
        if isinstance(arg, ast.Constant) and arg.value != ""
    ]
    assert literals == []


def test_env_get_in_loaders_defaults_to_a_field_or_empty() -> None:
    tree = ast.parse(Path(settings_module.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant)
        ):
            assert node.args[1].value == "", ast.unparse(node)


def test_rules_across_groups_keep_their_messages() -> None:
    with pytest.raises(ConfigError, match=r"^SESSION_MODE=redis needs REDIS_URL or REDIS_HOST$"):
        load_settings({"SESSION_MODE": "redis"}, env_file=None)
    with pytest.raises(ConfigError, match=r"^GRPC_PORT=8080 must differ from PORT"):
        load_settings({"GRPC_PORT": "8080"}, env_file=None)
    assert load_settings({"GRPC_PORT": "8080", "GRPC_ENABLED": "false"}, env_file=None)


def test_derived_defaults_follow_their_inputs() -> None:
    pg = load_settings({"DB_TYPE": "postgres"}, env_file=None)
    assert pg.db.name == "gpuproxy"
    keyed = load_settings({"VASTAI_API_KEY": "k"}, env_file=None)
    assert keyed.providers.sandbox_enabled is False
    unix = load_settings({"SYSLOG_NETWORK": "unix"}, env_file=None)
    assert unix.log.syslog_address == "/dev/log"
    small = load_settings({"STORAGE_QUOTA_BYTES": "1000"}, env_file=None)
    assert small.models.max_upload_bytes == 1000
