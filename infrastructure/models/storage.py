"""Model storage: a local folder (default) or OCI Object Storage (``oci_storage``).

Keys look like ``models/<owner>/<model_id>.onnx``. Writes go to a temporary name and are
renamed into place, so a reader never sees a partial file and a failed write leaves none.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domain.models import ModelStorage
    from infrastructure.settings import Settings

KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)+$")


def check_key(key: str) -> str:
    if not KEY.match(key) or ".." in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


def place(source: Path, dest: Path) -> int:
    """Copy ``source`` to ``dest`` atomically (temporary name, then rename); bytes copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with source.open("rb") as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest.stat().st_size


class LocalStorage:
    """Objects under a folder (``DATA_DIR``: keys start with ``models/``)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: Path) -> int:
        return place(source, self._path(key))

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"model object {key} is missing from {self.root}")
        return path

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def open_storage(settings: Settings) -> ModelStorage:
    """The backend ``STORAGE_BACKEND`` names."""
    if settings.models.storage_backend == "oci":
        from infrastructure.models.oci_storage import OciStorage

        return OciStorage.from_settings(settings)
    return LocalStorage(settings.db.data_dir)
