"""Containerfile, compose.yaml and deploy/nginx.conf agree with each other and the rules.

The stack itself runs in ``make container-test`` (tests/container); these are the quick
checks every ``pytest -q`` makes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$")
REFERENCE = re.compile(r"^(redis://:)?\$\{[A-Z_]+(:\?[^}]*)?\}(@.*)?$")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_secrets_in_compose_come_only_from_the_environment() -> None:
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or "@" in str(value):  # a URL with credentials
                assert REFERENCE.match(str(value)), f"{name}.{key} = {value!r} is not ${{VAR}}"


def test_every_long_running_service_has_a_health_check_and_restarts() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no"
            continue
        assert service.get("healthcheck", {}).get("test"), name
        assert service.get("restart") == "unless-stopped", name
    replicas = [n for n in services if n.startswith("gpuproxy-")]
    assert len(replicas) >= 2
    for name in replicas:
        assert "--no-migrate" in services[name]["command"]
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_nginx_upstreams_are_the_compose_replicas() -> None:
    replicas = {n for n in _compose()["services"] if n.startswith("gpuproxy-")}
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    http = set(re.findall(r"server (gpuproxy-\d+):8080", conf))
    grpc = set(re.findall(r"server (gpuproxy-\d+):9090", conf))
    assert http == replicas
    assert grpc == replicas
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf  # replaced, not appended


def test_each_replica_advertises_its_sandbox_instances_by_its_own_name() -> None:
    """Another replica reaches a sandbox instance as ``replica:port`` (docs/adr/0028)."""
    services = _compose()["services"]
    for name in (n for n in services if n.startswith("gpuproxy-")):
        env = services[name]["environment"]
        assert env["SANDBOX_BIND_HOST"] == "0.0.0.0", name  # noqa: S104
        assert env["SANDBOX_ADVERTISE_HOST"] == services[name]["hostname"] == name
        assert env["DB_TYPE"] == "postgres", name  # the shared settings are merged in


def test_containerfile_final_stage_is_offline_non_root_and_checks_ready() -> None:
    text = (ROOT / "Containerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "pip install" not in final
    assert "--no-index" in text[: text.rindex("\nFROM ")]
    user = re.search(r"^USER (\S+)", final, re.MULTILINE)
    assert user
    assert user.group(1).split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*/ready", final, re.MULTILINE)
    assert 'VOLUME ["/var/lib/gpuproxy"]' in final
    assert "ARG BASE_IMAGE=docker.io/library/python:3.11-slim" in text
