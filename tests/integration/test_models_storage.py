"""OCI Object Storage through the real ``oci`` SDK, against ``tests/fake_servers/oci.py``.

A throwaway RSA key is made per module; the fake verifies every request's OCI HTTP
signature with its public half. Credentials come from the environment settings (``OCI_USER``
…) or from an OCI config file, as in production.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from infrastructure.models.oci_storage import OciStorage
from infrastructure.settings import Settings, load_settings
from tests.fake_servers.oci import FakeObjectStorage, running_oci
from tests.integration.test_models_support import World, dense_onnx, files_under, make_world

oci = pytest.importorskip("oci")

TOL = 1e-5
BUCKET = "models"
NAMESPACE = "axyz123"


@dataclass
class Keys:
    key_file: Path
    fingerprint: str
    public: rsa.RSAPublicKey


def make_key(folder: Path) -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "oci_api_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.md5(der).hexdigest()  # noqa: S324 - how OCI fingerprints API keys
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, 32, 2))
    return Keys(path, fingerprint, key.public_key())


def oci_env(fake: FakeObjectStorage, keys: Keys, data: Path, **extra: str) -> dict[str, str]:
    return {
        "DATA_DIR": str(data),
        "STORAGE_BACKEND": "oci",
        "OCI_STORAGE_NAMESPACE": NAMESPACE,
        "OCI_STORAGE_BUCKET": BUCKET,
        "OCI_STORAGE_ENDPOINT": fake.url,
        "OCI_USER": "ocid1.user.oc1..aaaaaaaatest",
        "OCI_TENANCY": "ocid1.tenancy.oc1..aaaaaaaatest",
        "OCI_FINGERPRINT": keys.fingerprint,
        "OCI_KEY_FILE": str(keys.key_file),
        "OCI_REGION": "eu-frankfurt-1",
        "OCI_PART_SIZE": str(1 << 20),  # multipart above 1 MiB
        **extra,
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_key(tmp_path_factory.mktemp("oci-key"))


@pytest.fixture
def fake(keys: Keys) -> Iterator[FakeObjectStorage]:
    with running_oci(NAMESPACE, (BUCKET,), public_key=keys.public) as server:
        yield server


@pytest.fixture
def oci_world(fake: FakeObjectStorage, keys: Keys, tmp_path: Path) -> Iterator[World]:
    settings = load_settings(oci_env(fake, keys, tmp_path / "data"), env_file=None)
    with make_world(settings) as w:
        yield w


def test_models_live_in_the_bucket(oci_world: World, fake: FakeObjectStorage) -> None:
    w = oci_world
    small, small_ref = dense_onnx(seed=1)
    large, large_ref = dense_onnx(seed=2, pad=400_000)  # 1.6 MB: a multipart upload
    fake.fail_next(1, 503)  # the SDK retries
    a = w.upload("alice", "small.onnx", small, name="small")
    assert a.status_code == 201, a.text
    b = w.upload("alice", "large.onnx", large, name="large")
    assert b.status_code == 201, b.text
    assert b.json()["storage"] == "oci"
    keys = {a.json()["model_id"], b.json()["model_id"]}
    stored = fake.objects[BUCKET]
    assert {k.rsplit("/", 1)[1].removesuffix(".onnx") for k in stored} == keys
    assert all(k.startswith(f"models/{w.ids['alice']}/") for k in stored)
    assert stored[f"models/{w.ids['alice']}/{b.json()['model_id']}.onnx"] == large
    assert any(r.method == "POST" and r.path.endswith("/u") for r in fake.requests)
    assert any(r.method == "PUT" and "uploadPartNum=2" in r.query for r in fake.requests)
    assert all(r.headers["authorization"].startswith("Signature ") for r in fake.requests)
    assert files_under(w.data_dir / "models") == []  # nothing kept locally but the cache

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for name, ref in (("small", small_ref), ("large", large_ref)):
        answer = w.predict("alice", name, {"input": x.tolist()})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["output"], ref(x), atol=TOL)
    assert len(files_under(w.data_dir / "model-cache")) == 2

    assert w.client.delete("/api/v1/models/large", headers=w.h("alice")).status_code == 200
    assert len(stored) == 1
    assert len(files_under(w.data_dir / "model-cache")) == 1


def test_storage_refusal_keeps_nothing(fake: FakeObjectStorage, keys: Keys, tmp_path: Path) -> None:
    other = make_key(tmp_path)  # signs with a key the bucket does not know
    settings = load_settings(
        oci_env(fake, other, tmp_path / "data", OCI_MAX_ATTEMPTS="1"), env_file=None
    )
    fake.public_key = keys.public
    with make_world(settings) as w:
        content, _ = dense_onnx()
        refused = w.upload("alice", "m.onnx", content, name="m")
        assert refused.status_code == 503
        assert "NotAuthenticated" in refused.json()["detail"]
        listed = w.client.get("/api/v1/models", headers=w.h("alice")).json()
        assert listed["count"] == 0
        assert listed["quota"]["storage_bytes_used"] == 0
        assert listed["quota"]["uploads_last_hour"] == 0
        assert files_under(w.data_dir / "uploads") == []
    assert fake.objects[BUCKET] == {}


def test_config_file_credentials_and_fake_errors(
    fake: FakeObjectStorage, keys: Keys, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[DEFAULT]\nuser=ocid1.user.oc1..aaaaaaaatest\n"
        f"fingerprint={keys.fingerprint}\nkey_file={keys.key_file}\n"
        "tenancy=ocid1.tenancy.oc1..aaaaaaaatest\nregion=us-ashburn-1\n"
    )
    settings: Settings = load_settings(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "STORAGE_BACKEND": "oci",
            "OCI_STORAGE_BUCKET": BUCKET,  # no namespace: asked of the service
            "OCI_STORAGE_ENDPOINT": fake.url,
            "OCI_CONFIG_FILE": str(config),
        },
        env_file=None,
    )
    storage = OciStorage.from_settings(settings)
    assert storage.namespace == NAMESPACE
    source = tmp_path / "blob"
    source.write_bytes(b"model bytes")
    assert storage.put("models/u/one.onnx", source) == 11
    assert storage.local_path("models/u/one.onnx").read_bytes() == b"model bytes"
    with pytest.raises(FileNotFoundError):
        storage.local_path("models/u/missing.onnx")
    storage.delete("models/u/missing.onnx")  # already gone: fine
    with pytest.raises(oci.exceptions.ServiceError) as missing:
        storage.client.get_object(NAMESPACE, BUCKET, "models/u/missing.onnx")
    assert (missing.value.status, missing.value.code) == (404, "ObjectNotFound")
    with pytest.raises(oci.exceptions.ServiceError) as no_bucket:
        storage.client.head_object(NAMESPACE, "nope", "x")
    assert no_bucket.value.status == 404
    storage.delete("models/u/one.onnx")
    assert fake.objects[BUCKET] == {}
