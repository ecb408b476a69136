"""Runs ``convert_worker`` in a child process for every upload, whatever its format.

The child gets a minimal environment (no secrets: ``JWT_SECRET``, database passwords and
payment keys stay in the server), a time limit, a memory limit, and one thread per library;
its answer comes back through a result file, never through its console.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from domain.models import (
    ConversionUnavailableError,
    ConvertOptions,
    InvalidModelError,
    Signature,
)
from infrastructure.models.convert_worker import UNAVAILABLE, USER_ERROR

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME", "VIRTUAL_ENV")


class SubprocessConverter:
    """``memory_bytes``: the child's address-space limit (0: none)."""

    def __init__(self, *, timeout: float = 300.0, memory_bytes: int = 0) -> None:
        self.timeout = timeout
        self.memory_bytes = memory_bytes

    def convert(self, fmt: str, source: Path, dest: Path, options: ConvertOptions) -> Signature:
        source, dest = source.resolve(), dest.resolve()  # the child runs in another folder
        with tempfile.TemporaryDirectory(prefix="convert-", dir=dest.parent) as work:
            job_path, result_path = Path(work) / "job.json", Path(work) / "result.json"
            job_path.write_text(
                json.dumps(
                    {
                        "format": fmt,
                        "source": str(source),
                        "dest": str(dest),
                        "result": str(result_path),
                        "input_shape": list(options.input_shape) if options.input_shape else None,
                        "n_features": options.n_features,
                        "memory_bytes": self.memory_bytes,
                    }
                )
            )
            env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
            env.update(
                PYTHONPATH=str(ROOT),
                OMP_NUM_THREADS="1",
                MKL_NUM_THREADS="1",
                OPENBLAS_NUM_THREADS="1",
                PYTHONDONTWRITEBYTECODE="1",
            )
            try:
                done = subprocess.run(  # noqa: S603 - a fixed command line
                    [sys.executable, "-m", "infrastructure.models.convert_worker", str(job_path)],
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=self.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                dest.unlink(missing_ok=True)
                raise InvalidModelError(
                    f"converting the model took longer than {self.timeout:g} s", field="model"
                ) from None
            result = json.loads(result_path.read_text()) if result_path.is_file() else None
        if done.returncode == 0 and result and result.get("ok"):
            return Signature.from_json(result["signature"])
        dest.unlink(missing_ok=True)
        if result is not None and done.returncode == USER_ERROR:
            raise InvalidModelError(str(result["error"]), field="model")
        if result is not None and done.returncode == UNAVAILABLE:
            raise ConversionUnavailableError(str(result["error"]), format=fmt)
        log.error(
            "model conversion (%s) crashed with exit code %s: %s",
            fmt,
            done.returncode,
            done.stderr.decode(errors="replace")[-2000:],
        )
        raise InvalidModelError(
            "the model could not be loaded (its loader crashed): the file is corrupt or not a "
            f"{fmt} model",
            field="model",
        )
