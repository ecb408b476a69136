"""The README runs as written: its ``readme-test`` blocks, in order, against a fresh server.

A block is picked when the line before its ```` ```bash ```` fence is ``<!-- readme-test -->``.
The test fills in what a reader's machine provides: the server's address in place of
``http://localhost:8080``, the virtualenv's ``bin`` on ``PATH`` and ``.venv`` in the working
directory. ``curl`` fails on an HTTP error status (as ``--fail-with-body``), so a README call
the server refuses fails the test; every command must succeed (``set -euo pipefail``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.settings import load_settings
from tests.support.http import JWT_SECRET, env_of, server_process

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-test -->"
BLOCK = re.compile(r"^" + re.escape(MARKER) + r"\n```bash\n(.*?)^```$", re.M | re.S)
README_SERVER = "http://localhost:8080"
CURL = 'curl() { command curl --fail-with-body --show-error "$@"; }\n'


def readme_blocks(text: str) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(text)]


def test_the_marked_blocks_are_the_walkthrough() -> None:
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    joined = "\n".join(blocks)
    for step in ("auth/register", "grant-credits", "spending/check", "verify-projections"):
        assert step in joined


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README's examples use jq")
def test_readme_runs_as_written(tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "JWT_SECRET": JWT_SECRET,
        "SANDBOX_PROVISIONING_DELAY": "0.2",
        "INSTANCE_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
    }
    settings = load_settings(env, env_file=None)
    workdir = tmp_path / "work"  # a reader's checkout: .venv here, no .env
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    server_env = {**env_of(settings), **env}
    with server_process(server_env, log_file=tmp_path / "server.log") as url:
        script = "set -euo pipefail\nset -x\n" + CURL
        script += "\n".join(readme_blocks((ROOT / "README.md").read_text()))
        done = subprocess.run(
            ["bash", "-c", script.replace(README_SERVER, url)],
            cwd=workdir,
            env={
                **server_env,
                "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                "GPUPROXY_SERVER": url,
                "HOME": str(tmp_path),
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n---\n{done.stderr[-5000:]}"
    assert '"allowed":true' in done.stdout.replace(" ", "")  # spending/check said 200


def test_make_help_lists_every_target() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    targets = re.findall(r"^([a-zA-Z][a-zA-Z_-]*):", (ROOT / "Makefile").read_text(), re.M)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert set(targets) <= listed
    assert all(len(line.split(None, 1)) == 2 for line in done.stdout.splitlines())
