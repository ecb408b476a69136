"""Regenerate the gRPC code from ``protos/gpuproxy.proto`` (``make protos``).

Writes, into ``interfaces/grpc/generated/`` (or the folder given as the only argument):

- ``gpuproxy/__init__.py``: the betterproto messages, grpclib stub and service base;
- ``gpuproxy.binpb``: the ``FileDescriptorSet`` (with imports) that server reflection serves.

Needs the dev extra (``grpcio-tools``, ``betterproto[compiler]``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "protos" / "gpuproxy.proto"
DEFAULT_OUT = ROOT / "interfaces" / "grpc" / "generated"
DESCRIPTOR = "gpuproxy.binpb"


def generate(out: Path) -> None:
    """Run protoc with the betterproto plugin and write the descriptor set into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plugin = Path(sys.executable).parent / "protoc-gen-python_betterproto"
    if not plugin.exists():
        found = shutil.which("protoc-gen-python_betterproto")
        if found is None:
            raise SystemExit("protoc-gen-python_betterproto not found: pip install -e '.[dev]'")
        plugin = Path(found)
    subprocess.run(  # noqa: S603 - a fixed command line
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--plugin=protoc-gen-python_betterproto={plugin}",
            f"--python_betterproto_out={out}",
            f"--descriptor_set_out={out / DESCRIPTOR}",
            "--include_imports",
            PROTO.name,
        ],
        cwd=PROTO.parent,
        check=True,
        stdout=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
