"""Models in OCI Object Storage, through the official ``oci`` SDK.

Credentials: the OCI config file (``OCI_CONFIG_FILE``, profile ``OCI_CONFIG_PROFILE``) or,
when ``OCI_USER`` is set, the environment (``OCI_USER``, ``OCI_TENANCY``,
``OCI_FINGERPRINT``, ``OCI_KEY_FILE``, ``OCI_REGION``). ``OCI_STORAGE_ENDPOINT`` overrides
the regional endpoint (tests point it at ``tests/fake_servers/oci.py``).

Uploads go through the SDK's ``UploadManager``: one streamed ``PutObject`` up to the part
size, multipart above it (parts retried one by one). Serving reads a local copy, downloaded
once per process into ``DATA_DIR/model-cache`` (write to a temporary name, then rename).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain.models import StorageUnavailableError
from infrastructure.models.storage import check_key

if TYPE_CHECKING:
    from infrastructure.settings import Settings

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def oci_config(settings: Settings) -> dict[str, Any]:
    """An OCI SDK config from the environment settings or the config file; validated."""
    import oci

    if settings.models.oci_user:
        config: dict[str, Any] = {
            "user": settings.models.oci_user,
            "tenancy": settings.models.oci_tenancy,
            "fingerprint": settings.models.oci_fingerprint,
            "key_file": settings.models.oci_key_file,
            "region": settings.models.oci_region,
        }
    else:
        config = dict(
            oci.config.from_file(
                settings.models.oci_config_file or oci.config.DEFAULT_LOCATION,
                settings.models.oci_config_profile or "DEFAULT",
            )
        )
        if settings.models.oci_region:
            config["region"] = settings.models.oci_region
    oci.config.validate_config(config)
    return config


class OciStorage:
    name = "oci"

    def __init__(
        self,
        client: Any,
        *,
        namespace: str,
        bucket: str,
        cache_dir: Path,
        part_size: int = 128 * CHUNK,
    ) -> None:
        from oci.object_storage import UploadManager

        self.client = client
        self.namespace = namespace or str(client.get_namespace().data)
        self.bucket = bucket
        self.cache_dir = cache_dir
        self.part_size = part_size
        self.uploads = UploadManager(client, allow_parallel_uploads=False)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        cache_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> OciStorage:
        import oci

        retry = oci.retry.RetryStrategyBuilder(
            max_attempts=settings.models.oci_max_attempts,
            total_elapsed_time_seconds=300,
            service_error_retry_on_any_5xx=True,
        ).get_retry_strategy()
        kwargs: dict[str, Any] = {"retry_strategy": retry, "timeout": (10.0, 300.0)}
        if settings.models.oci_storage_endpoint:
            kwargs["service_endpoint"] = settings.models.oci_storage_endpoint
        client = oci.object_storage.ObjectStorageClient(oci_config(settings), **kwargs)
        return cls(
            client,
            namespace=settings.models.oci_storage_namespace,
            bucket=settings.models.oci_storage_bucket,
            cache_dir=settings.db.data_dir / "model-cache",
            part_size=settings.models.oci_part_size,
        )

    def put(self, key: str, source: Path) -> int:
        from oci.exceptions import ServiceError

        check_key(key)
        try:
            self.uploads.upload_file(
                self.namespace,
                self.bucket,
                key,
                str(source),
                part_size=self.part_size,
                content_type="application/octet-stream",
            )
        except ServiceError as exc:
            log.error("OCI put %s failed: %s %s %s", key, exc.status, exc.code, exc.message)
            raise StorageUnavailableError(
                f"object storage refused the model ({exc.status} {exc.code})"
            ) from None
        except OSError as exc:  # connection failures after the SDK's retries
            log.error("OCI put %s failed: %s", key, exc)
            raise StorageUnavailableError("object storage is unreachable") from None
        return source.stat().st_size

    def _cached(self, key: str) -> Path:
        return self.cache_dir / check_key(key).replace("/", "__")

    def local_path(self, key: str) -> Path:
        path = self._cached(key)
        if path.is_file():
            return path
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one download per key at a time in this process
            if not path.is_file():
                self._download(key, path)
        return path

    def _download(self, key: str, path: Path) -> None:
        from oci._vendor.requests.exceptions import RequestException
        from oci.exceptions import ServiceError

        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            response = self.client.get_object(self.namespace, self.bucket, key)
            with tmp.open("wb") as out:
                for chunk in response.data.raw.stream(CHUNK, decode_content=False):
                    out.write(chunk)
            os.replace(tmp, path)
        except ServiceError as exc:
            if exc.status == 404:
                raise FileNotFoundError(f"model object {key} is missing from the bucket") from exc
            log.error("OCI get %s failed: %s %s", key, exc.status, exc.code)
            raise StorageUnavailableError(
                f"object storage refused the model ({exc.status} {exc.code})"
            ) from None
        except RequestException as exc:  # connection failures after the SDK's retries
            log.error("OCI get %s failed: %s", key, exc)
            raise StorageUnavailableError("object storage is unreachable") from None
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        from oci.exceptions import ServiceError

        self._cached(key).unlink(missing_ok=True)
        try:
            self.client.delete_object(self.namespace, self.bucket, check_key(key))
        except ServiceError as exc:
            if exc.status != 404:
                raise
