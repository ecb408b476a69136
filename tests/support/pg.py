"""A throwaway PostgreSQL cluster on a loopback port, for tests and benchmarks.

Uses the server binaries installed on the machine (``initdb``/``pg_ctl`` on PATH or under
``/usr/lib/postgresql/*/bin``). When running as root, the cluster runs as the ``postgres``
user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infrastructure.settings import Settings


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    datadir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def env(self, dbname: str) -> dict[str, str]:
        """Settings for the service pointing at one database of this cluster."""
        return {
            "DB_TYPE": "postgres",
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": self.user,
            "DB_PASSWORD": "",
            "DB_NAME": dbname,
        }

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new empty database, or a copy of ``template`` (a database nobody is connected to;
        copied file by file, which for a small one is cheaper than the default WAL copy)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if template is None:
                conn.execute(f'CREATE DATABASE "{name}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return name

    def freeze_as_template(self, name: str) -> str:
        """Mark ``name`` a template that refuses connections (so copying it never finds one)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        return name


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def running_cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """Start a fresh cluster; stop and delete it afterwards.

    ``durable=False`` turns fsync off (fast tests; the server process is never killed).
    Benchmarks pass ``durable=True`` so commits cost what they cost in production.
    """
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="gpuproxy-pg-"))
    datadir = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres(
            [initdb, "-D", str(datadir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {root} -h 127.0.0.1 -c max_connections=200 -c shared_buffers=256MB" + (
        "" if durable else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    subprocess.run(
        _as_postgres(
            [
                pg_ctl,
                "-D",
                str(datadir),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield Cluster("127.0.0.1", port, "postgres", datadir)
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(datadir), "-m", "immediate", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def env_of(settings: Settings) -> dict[str, str]:
    """The environment a separate command (the admin CLI) needs to reach ``settings``' database."""
    if settings.db.type == "sqlite":
        return {"DB_TYPE": "sqlite", "DATA_DIR": str(settings.db.data_dir)}
    return {
        "DB_TYPE": "postgres",
        "DB_HOST": settings.db.host,
        "DB_PORT": str(settings.db.port),
        "DB_USER": settings.db.user,
        "DB_NAME": settings.db.name,
        "DB_PASSWORD": "",
    }
