"""A real PgBouncer in transaction pooling mode in front of the throwaway PostgreSQL cluster.

Debian's ``pgbouncer`` package (``apt-get install pgbouncer``). It listens on a loopback port
chosen by the OS, logs every client in as the cluster's user (``auth_type = any``) and keeps a
small server pool, so client transactions really do share and swap server connections.
PgBouncer refuses to run as root: as root it runs as the ``postgres`` user, like the cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.pg import Cluster, free_port


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


@dataclass(frozen=True)
class Bouncer:
    host: str
    port: int
    cluster: Cluster

    def env(self, dbname: str) -> dict[str, str]:
        """Settings for the service: pooled traffic through PgBouncer, session work direct."""
        return {
            **self.cluster.env(dbname),
            "DB_PORT": str(self.port),
            "DB_POOLER": "pgbouncer",
            "DB_DIRECT_HOST": self.cluster.host,
            "DB_DIRECT_PORT": str(self.cluster.port),
        }

    def dsn(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} user={self.cluster.user} dbname={dbname}"


def _config(cluster: Cluster, port: int, root: Path, pool_size: int, only: str | None) -> str:
    return "\n".join(
        [
            "[databases]",
            f"{only or '*'} = host={cluster.host} port={cluster.port} user={cluster.user}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = any",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 1000",
            "server_reset_query =",
            "server_login_retry = 1",  # after a failed server login (default 15 s)
            "ignore_startup_parameters = extra_float_digits",
            f"logfile = {root / 'pgbouncer.log'}",
            f"pidfile = {root / 'pgbouncer.pid'}",
            "",
        ]
    )


@contextlib.contextmanager
def running_pgbouncer(
    cluster: Cluster, *, pool_size: int = 4, only: str | None = None
) -> Iterator[Bouncer]:
    """Start PgBouncer (transaction mode) in front of ``cluster``; stop it afterwards.

    ``only``: the one database it serves (default: any database of the cluster)."""
    binary = find_pgbouncer()
    if binary is None:
        raise FileNotFoundError("pgbouncer not found (apt-get install pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="gpuproxy-pgbouncer-"))
    port = free_port()
    ini = root / "pgbouncer.ini"
    ini.write_text(_config(cluster, port, root, pool_size, only))
    cmd = [binary, str(ini)]
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(ini, "postgres", "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise OSError(f"pgbouncer exited: {err.strip()}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Bouncer("127.0.0.1", port, cluster)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(root, ignore_errors=True)
