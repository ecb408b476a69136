"""The processes of the scale test, each one restartable: PostgreSQL, PgBouncer, Redis, nginx
and ``aiserve-gpuproxyd`` replicas, all on loopback ports, configuration in a temp folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.pg import Cluster, _as_postgres, find_bin, free_port

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ROOT / ".venv" / "bin" / "aiserve-gpuproxyd"


def _wait(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:  # noqa: S110 - not up yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def restart_postgres(cluster: Cluster) -> None:
    """``pg_ctl restart -m fast`` (the options of the first start are kept in postmaster.opts)."""
    pg_ctl = find_bin("pg_ctl")
    assert pg_ctl is not None
    subprocess.run(
        _as_postgres(
            [
                pg_ctl,
                "-D",
                str(cluster.datadir),
                "-m",
                "fast",
                "-l",
                str(cluster.datadir.parent / "log"),
                "-w",
                "-t",
                "60",
                "restart",
            ]
        ),
        check=True,
        capture_output=True,
    )


@dataclass
class Daemon:
    """One restartable child process with its console in a log file."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as console:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.log.parent,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def redis_daemon(root: Path) -> Daemon:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    # As in production (compose.yaml, docs/operations.md): the append-only file keeps the
    # rate-limit counters and revocation marks across a restart.
    argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(root)]
    return Daemon("redis", argv, root / "redis.log", port=port)


def wait_redis(daemon: Daemon) -> None:
    import redis

    client = redis.Redis(port=daemon.port, socket_timeout=1)
    try:
        _wait(client.ping, "redis", 20)
    finally:
        client.close()


def pgbouncer_daemon(root: Path, cluster: Cluster) -> Daemon:
    """PgBouncer in transaction pooling mode in front of ``cluster`` (runs as ``postgres``)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise FileNotFoundError("pgbouncer not found (apt-get install pgbouncer)")
    folder = root / "pgbouncer"
    folder.mkdir(exist_ok=True)
    port = free_port()
    (folder / "userlist.txt").write_text(f'"{cluster.user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={cluster.host} port={cluster.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 1000\ndefault_pool_size = 40\n"
        "reserve_pool_size = 10\nserver_reset_query =\n"
        # how long a server connection may sit idle before it is tested (SELECT 1) on reuse;
        # PgBouncer's default 30 s: after a PostgreSQL restart dead ones fail one query each
        f"server_check_delay = {os.environ.get('SCALE_PGBOUNCER_CHECK_DELAY', '30')}\n"
        # after a failed server login (PostgreSQL shutting down) PgBouncer refuses clients
        # for this many seconds; its default, 15, is most of a PostgreSQL restart's cost, so
        # the deployment (deploy/pgbouncer, docs/pgbouncer.md) and this test use 1
        f"server_login_retry = {os.environ.get('SCALE_PGBOUNCER_LOGIN_RETRY', '1')}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"admin_users = {cluster.user}\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
        "log_connections = 0\nlog_disconnections = 0\n"
    )
    if os.geteuid() == 0:
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, "postgres", "postgres")
    argv = _as_postgres([binary, str(folder / "pgbouncer.ini")])
    return Daemon("pgbouncer", argv, root / "pgbouncer.console", port=port)


def nginx_daemon(root: Path, replica_ports: list[int], upstream_port: int) -> Daemon:
    """nginx in front of the replicas (retries idempotent requests on a dead one), plus a
    tiny fast "GPU instance" server on ``upstream_port`` that proxied requests reach."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise FileNotFoundError("nginx not found (apt-get install nginx-light)")
    folder = root / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # noqa: S103 - nginx workers (nobody) write their temp files here
    for path in (folder, *folder.iterdir()):
        os.chmod(path, 0o777)  # noqa: S103 - a throwaway folder under /tmp
    port = free_port()
    servers = "\n".join(
        f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=2s;" for p in replica_ports
    )
    temp = "\n".join(
        f"  {kind}_temp_path {folder / sub};"
        for kind, sub in (
            ("client_body", "body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
    )
    (folder / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
{temp}
  log_format scale '$msec $status $upstream_addr $upstream_status $request_time "$request"';
  access_log {folder / "access.log"} scale;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream gpuproxy {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://gpuproxy;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      # a dead replica: try the next one (nginx never retries POST/PATCH/LOCK unless told)
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 2s;
      proxy_read_timeout 120s;
    }}
  }}
  server {{
    listen 127.0.0.1:{upstream_port};
    access_log off;
    location / {{
      default_type application/json;
      return 200 '{{"ok": true}}';
    }}
  }}
}}
"""
    )
    argv = [binary, "-c", str(folder / "nginx.conf"), "-p", str(folder)]
    return Daemon("nginx", argv, root / "nginx.console", port=port)


def replica_daemon(root: Path, index: int, env: dict[str, str]) -> Daemon:
    port = free_port()
    child = {
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRPC_ENABLED": "false",
        "LOG_FILE": str(root / f"replica{index}.log"),
    }
    argv = [str(DAEMON), "--env-file", "/nonexistent"]
    return Daemon(f"replica{index}", argv, root / f"replica{index}.console", child, port)


def wait_http(url: str, timeout: float = 90.0) -> None:
    _wait(lambda: httpx.get(url, timeout=2).status_code == 200, url, timeout)


def wait_port(daemon: Daemon, timeout: float = 30.0) -> None:
    _wait(lambda: _port_open(daemon.port), daemon.name, timeout)
