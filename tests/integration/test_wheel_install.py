"""The built wheel works on its own: installed outside the checkout, run from another folder.

The wheel is built from a copy of the source tree (no ``build/`` in the checkout), installed
with ``--no-deps`` into a fresh virtualenv in a temporary folder. The dependencies come from
the project's virtualenv, appended to ``sys.path`` by a ``.pth`` line: a plain path entry, so
that virtualenv's own ``.pth`` files (the editable install's finder) are not run and nothing
of the project can be imported from the checkout. The test checks where the packages were
imported from, runs ``aiserve-gpuproxy-admin migrate`` on SQLite and PostgreSQL and starts
``aiserve-gpuproxyd`` with the temporary folder as its working directory, ``PYTHONPATH``
unset. Run it alone with ``pytest -m wheel``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.http import stop_process, wait_healthy
from tests.support.pg import Cluster, free_port

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("domain", "projections", "interfaces", "infrastructure", "migrations")
PACKAGE_FILES = ("pyproject.toml", "README.md")
PIP = (sys.executable, "-m", "pip")


@dataclass(frozen=True)
class Install:
    venv: Path
    workdir: Path  # the operator's folder: not the checkout, no .env

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "HOME", "TMPDIR"}}
        return {**keep, "LOG_LEVEL": "WARNING", **extra}

    def run(self, args: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=self.workdir,
            env=self.env(extra),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


def _build_wheel(tmp: Path) -> Path:
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in PACKAGE_FILES:
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp / "wheels"
    # this virtualenv's setuptools when it meets pyproject's build requirement (fast, offline);
    # else pip's isolated build environment
    fast = ["--no-build-isolation", "--no-index"] if _setuptools_major() >= 68 else []
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "-q", *fast, "-w", wheels, source],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("aiserve_gpuproxy-*.whl")
    return wheel


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies: a plain path line, so the project venv's .pth files do not run
    (Path(purelib) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    workdir = tmp / "operator"
    workdir.mkdir()
    return Install(venv, workdir)


def test_packages_are_imported_from_the_install_not_the_checkout(install: Install) -> None:
    code = (
        "import json, importlib; print(json.dumps({m: importlib.import_module(m).__file__"
        f" for m in {list(SOURCES)!r}}}))"
    )
    done = install.run([install.bin("python"), "-c", code], {})
    assert done.returncode == 0, done.stderr
    for module, path in json.loads(done.stdout).items():
        assert Path(path).is_relative_to(install.venv), (module, path)


@contextlib.contextmanager
def _server(install: Install, extra: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = install.env(
        {**extra, "HOST": "127.0.0.1", "PORT": str(port), "GRPC_PORT": str(free_port())}
    )
    log = (install.workdir / f"server-{port}.log").open("w")
    proc = subprocess.Popen(
        [install.bin("aiserve-gpuproxyd"), "--no-migrate"],
        cwd=install.workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(
            proc, url, timeout=90, output=lambda: Path(log.name).read_text(errors="replace")
        )
        yield url
    finally:
        stop_process(proc)
        log.close()


def _migrate_and_serve(install: Install, settings_env: dict[str, str]) -> None:
    done = install.run([install.bin("aiserve-gpuproxy-admin"), "migrate", "--json"], settings_env)
    assert done.returncode == 0, done.stderr
    applied = json.loads(done.stdout[done.stdout.index("{") :])["applied"]  # after "created …"
    shipped = sorted(p.stem for p in (ROOT / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert applied == shipped
    again = install.run([install.bin("aiserve-gpuproxy-admin"), "migrate", "--json"], settings_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["applied"] == []
    with _server(install, settings_env) as url:
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert httpx.get(f"{url}/ready").status_code == 200
        dashboard = httpx.get(f"{url}/admin/")  # static files shipped in the package
        assert dashboard.status_code == 200
        assert "<html" in dashboard.text.lower()
        asset = httpx.get(f"{url}/schema/assets/swagger-ui.css")
        assert asset.status_code == 200
        assert len(asset.content) > 10_000


def test_sqlite_migrate_and_serve_from_another_folder(install: Install) -> None:
    data = install.workdir / "data-sqlite"
    _migrate_and_serve(install, {"DB_TYPE": "sqlite", "DATA_DIR": str(data)})
    assert (data / "gpuproxy.db").is_file()


@pytest.mark.postgres
def test_postgres_migrate_and_serve_from_another_folder(
    install: Install, pg_cluster: Cluster
) -> None:
    env = pg_cluster.env("wheel_install")  # `migrate` creates the database
    _migrate_and_serve(install, {**env, "DATA_DIR": str(install.workdir / "data-pg")})
