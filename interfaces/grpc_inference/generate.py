"""Regenerate ``generated/`` from ``protos/grpc_predict_v2.proto`` (betterproto + grpclib).

``python -m interfaces.grpc_inference.generate`` writes ``generated/inference/__init__.py``
(messages, stub and service base) and ``generated/grpc_predict_v2.binpb`` (the descriptor
set, for server reflection). Needs the dev extra (``grpcio-tools``, ``betterproto[compiler]``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "grpc_predict_v2.proto"
OUT = Path(__file__).resolve().parent / "generated"
DESCRIPTOR = "grpc_predict_v2.binpb"


def generate(out: Path = OUT) -> None:
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
    (out / "__init__.py").touch()


if __name__ == "__main__":
    generate()
