"""nginx for the proxy benchmark: the upstream answering a small JSON body, and the reference
``proxy_pass`` side (Debian's ``nginx-light``), each one worker process, loopback only.

Both run from a temporary prefix (their own config, pid, logs and temp paths) with
``daemon off``, so the benchmark owns and ends them like any child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_COMMON = """
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    {body}
}}
"""

_UPSTREAM = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{json}';
        }}
    }}
"""

_PROXY = """
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def available() -> bool:
    return Path(NGINX).exists()


def _start(prefix: Path, body: str, port: int) -> subprocess.Popen[bytes]:
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the temp prefix
    conf = prefix / "nginx.conf"
    conf.write_text(_COMMON.format(user=user, prefix=prefix, body=body))
    log = (prefix / "console.log").open("wb")
    proc = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-e",
            str(prefix / "error.log"),
            "-g",
            "daemon off;",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(prefix / 'error.log').read_text()[-1000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise
            time.sleep(0.05)


def upstream(prefix: Path, port: int, body: bytes) -> subprocess.Popen[bytes]:
    """nginx answering every request with ``body`` (JSON, no quote characters in it)."""
    text = body.decode()
    if "'" in text:
        raise ValueError("the body must not contain a single quote")
    return _start(prefix, _UPSTREAM.format(port=port, json=text), port)


def proxy_pass(prefix: Path, port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    """nginx ``proxy_pass`` to ``upstream_port`` with upstream keep-alive."""
    return _start(prefix, _PROXY.format(port=port, upstream=upstream_port), port)
