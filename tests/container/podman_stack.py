"""Build the images and run compose.yaml with podman, offline (no registry reachable).

- Base images come from Debian's packages: ``debootstrap --variant=minbase bookworm`` into a
  folder, then ``podman import`` (one with python3 for the server, one with postgresql,
  redis, pgbouncer and nginx for the stand-ins in deploy/local). They are kept between runs.
- The wheelhouse is built on the host from a copy of the working tree (``pip wheel``), so the
  image build needs no network and the checkout gets no build/ folder.
- podman runs with ``runc`` and explicit ulimits (a private ``CONTAINERS_CONF``): crun refuses
  this machine's hybrid cgroups.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/gpuproxy-base:bookworm"
SVC_BASE_IMAGE = "localhost/gpuproxy-svc-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
SVC_PACKAGES = "postgresql,redis-server,redis-tools,pgbouncer,nginx-light,curl,ca-certificates"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
CONTAINERS_CONF = """\
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
"""
TOOLS = ("podman", "podman-compose", "runc")


class StackError(RuntimeError):
    """A build or compose step failed; the message carries its output."""


def missing_tools() -> list[str]:
    """Tools the test needs that are not installed (debootstrap only without base images)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass
class Podman:
    """podman and podman-compose with this module's containers.conf."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        conf = self.workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        timeout: float = 900,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            cwd=cwd,
            env=self.env,
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise StackError(f"{' '.join(args)} exited {proc.returncode}:\n{tail}")
        return proc

    def image_exists(self, name: str) -> bool:
        return self.run("podman", "image", "exists", name, check=False).returncode == 0


def ensure_base(podman: Podman, image: str, packages: str) -> None:
    """Import a debootstrap'ed Debian bookworm as ``image`` unless it exists already."""
    if podman.image_exists(image):
        return
    if shutil.which("debootstrap") is None:
        raise FileNotFoundError("debootstrap not found (apt-get install debootstrap)")
    rootfs = Path(tempfile.mkdtemp(prefix="gpuproxy-rootfs-"))
    try:
        podman.run(
            "debootstrap",
            "--variant=minbase",
            f"--include={packages}",
            "bookworm",
            str(rootfs),
            MIRROR,
            timeout=1200,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", image],
            stdin=tar.stdout,
            env=podman.env,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imported.returncode != 0:
            raise StackError(f"podman import {image}: {imported.stderr[-2000:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def build_wheelhouse(podman: Podman, dest: Path) -> None:
    """Wheels of the working tree's package and its dependencies, built on the host."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    src = podman.workdir / "src"
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if path.is_file():
            target = src / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    # redis needs async-timeout on Python < 3.11.3: Debian bookworm's python3 is 3.11.2
    podman.run(
        sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dest), str(src),
        "async-timeout>=4.0.3",
        timeout=1800,
    )  # fmt: skip


def build_images(podman: Podman, tag: str) -> dict[str, str]:
    """The server image (Containerfile) and the local stand-ins; their names by role."""
    ctx = podman.workdir / "ctx"
    ctx.mkdir()
    shutil.copy2(ROOT / "Containerfile", ctx / "Containerfile")
    shutil.copy2(ROOT / ".dockerignore", ctx / ".dockerignore")
    build_wheelhouse(podman, ctx / "wheelhouse")
    images = {
        "GPUPROXY_IMAGE": f"localhost/gpuproxy:{tag}",
        "POSTGRES_IMAGE": "localhost/gpuproxy-local-postgres:bookworm",
        "REDIS_IMAGE": "localhost/gpuproxy-local-redis:bookworm",
        "NGINX_IMAGE": "localhost/gpuproxy-local-nginx:bookworm",
        "PGBOUNCER_IMAGE": "localhost/gpuproxy-local-pgbouncer:bookworm",
    }
    podman.run(
        "podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
        "-t", images["GPUPROXY_IMAGE"], "-f", "Containerfile", ".",
        cwd=ctx, timeout=1800,
    )  # fmt: skip
    for target in ("postgres", "redis", "nginx"):
        podman.run(
            "podman", "build", "--format", "docker", "--target", target,
            "--build-arg", f"BASE_IMAGE={SVC_BASE_IMAGE}",
            "-t", images[f"{target.upper()}_IMAGE"], ".",
            cwd=ROOT / "deploy" / "local",
        )  # fmt: skip
    podman.run(
        "podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={SVC_BASE_IMAGE}",
        "-t", images["PGBOUNCER_IMAGE"], ".",
        cwd=ROOT / "deploy" / "pgbouncer",
    )  # fmt: skip
    return images


@dataclass
class Stack:
    """One compose project from a copy of compose.yaml and deploy/ with its own .env."""

    podman: Podman
    project: str
    variables: Mapping[str, str]
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir = self.podman.workdir / "stack"
        self.dir.mkdir()
        shutil.copy2(ROOT / "compose.yaml", self.dir / "compose.yaml")
        shutil.copytree(ROOT / "deploy", self.dir / "deploy")
        lines = [f"{name}={value}" for name, value in self.variables.items()]
        (self.dir / ".env").write_text("\n".join(lines) + "\n")

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        proc = self.podman.run(
            "podman-compose", "-p", self.project, "-f", "compose.yaml", *args,
            cwd=self.dir, timeout=timeout, check=check,
        )  # fmt: skip
        return proc.stdout + proc.stderr

    def containers(self) -> dict[str, dict[str, object]]:
        """Service name -> podman's view of its container."""
        out = self.podman.run(
            "podman", "ps", "-a", "--format", "json",
            "--filter", f"label=io.podman.compose.project={self.project}",
        ).stdout  # fmt: skip
        found: dict[str, dict[str, object]] = {}
        for entry in json.loads(out or "[]"):
            labels = entry.get("Labels") or {}
            found[labels.get("com.docker.compose.service", entry["Names"][0])] = entry
        return found

    def name(self, service: str) -> str:
        names = self.containers()[service]["Names"]
        assert isinstance(names, list)
        return str(names[0])

    def healthy(self, service: str) -> bool:
        """Run the service's HEALTHCHECK now (podman has no timer for it without systemd)."""
        proc = self.podman.run("podman", "healthcheck", "run", self.name(service), check=False)
        return proc.returncode == 0

    def wait_healthy(self, services: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending and time.monotonic() < deadline:
            pending = [s for s in pending if not self.healthy(s)]
            if pending:
                time.sleep(3)
        if pending:
            raise StackError(f"not healthy after {timeout:.0f} s: {', '.join(pending)}")

    def exec(self, service: str, *args: str) -> str:
        return self.podman.run("podman", "exec", self.name(service), *args).stdout

    def logs(self, lines: int = 60) -> str:
        parts = []
        for service in self.containers():
            proc = self.podman.run(
                "podman", "logs", "--tail", str(lines), self.name(service), check=False
            )
            parts.append(f"--- {service}\n{proc.stdout}{proc.stderr}")
        return "\n".join(parts)


def secret() -> str:
    return secrets.token_hex(24)
