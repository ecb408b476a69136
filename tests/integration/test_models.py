"""Model hosting through the real REST app: upload, convert, registry, predictions, errors.

Models are made here: ONNX graphs built with ``onnx.helper``, a scikit-learn pipeline trained
now (sent as ONNX and as a pickle), and a TorchScript MLP. Predictions must equal the
framework's own within float32 tolerance. One world (SQLite, in-process test client) serves
the module; quotas, prices and PostgreSQL have their own worlds below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infrastructure.models.engine import CUDA
from infrastructure.settings import load_settings
from tests.integration.test_models_support import (
    World,
    dense_onnx,
    files_under,
    make_world,
    need_torch,
    pickled,
    sklearn_classifier,
    sklearn_regressor,
    sklearn_to_onnx,
    torchscript,
    two_input_onnx,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path_factory.mktemp("models") / "data"),
            "MODEL_USAGE_FLUSH_SECONDS": "3600",  # the tests flush by hand
        },
        env_file=None,
    )
    with make_world(settings) as w:
        yield w


@pytest.fixture(scope="module")
def dense(world: World) -> tuple[str, Any]:
    """A dense ONNX model of alice's, named 'dense'."""
    content, reference = dense_onnx()
    response = world.upload("alice", "dense.onnx", content, name="dense")
    assert response.status_code == 201, response.text
    return response.json()["model_id"], reference


# ------------------------------------------------------------------ uploads


def on_cuda(world: World) -> bool:
    """Whether the model service's (only) loaded session runs on the CUDA provider."""
    (session,) = world.c.model_service().engine._sessions.values()  # type: ignore[attr-defined]
    return bool(session.session.get_providers()[0] == CUDA)


def test_onnx_upload_answers_as_the_seed_and_predicts(world: World, dense: tuple[str, Any]) -> None:
    model_id, reference = dense
    shown = world.client.get(f"/api/v1/models/{model_id}", headers=world.h("alice")).json()
    assert shown["status"] == "ready"
    assert shown["format"] == "onnx"
    assert shown["converted_to"] is None
    assert shown["signature"] == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    row = [0.5, -1.0, 2.0, 0.25]
    answer = world.predict("alice", model_id, {"input": row})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) >= {"output", "latency_ms", "runtime", "used_gpu"}
    assert body["runtime"] == "onnxruntime"
    # true only where the session really runs on CUDA (onnxruntime-gpu and a GPU)
    assert body["used_gpu"] is on_cuda(world)
    np.testing.assert_allclose(body["output"], reference([row])[0], atol=TOL)
    batch = np.random.default_rng(3).standard_normal((5, 4)).tolist()
    by_name = world.predict("alice", "dense", {"input": batch}).json()
    np.testing.assert_allclose(by_name["output"], reference(batch), atol=TOL)
    assert by_name["outputs"]["y"] == by_name["output"]


def test_sklearn_model_sent_as_onnx_predicts_like_sklearn(world: World) -> None:
    model, x = sklearn_classifier()
    response = world.upload("alice", "clf.onnx", sklearn_to_onnx(model, 4), name="clf-onnx")
    assert response.status_code == 201, response.text
    answer = world.predict("alice", "clf-onnx", {"input": x[:20].tolist()}).json()
    np.testing.assert_allclose(
        answer["outputs"]["probabilities"], model.predict_proba(x[:20]), atol=TOL
    )
    assert answer["outputs"]["label"] == model.predict(x[:20]).tolist()
    assert answer["output"] == answer["outputs"]["label"]  # the first output
    only = world.predict(
        "alice", "clf-onnx", {"input": x[0].tolist(), "outputs": ["probabilities"]}
    ).json()
    assert list(only["outputs"]) == ["probabilities"]
    np.testing.assert_allclose(only["output"], model.predict_proba(x[:1])[0], atol=TOL)


def test_admin_pickle_is_converted_and_matches_sklearn(world: World) -> None:
    model, x = sklearn_regressor()
    response = world.upload(
        "root", "forest.joblib", pickled(model, joblib_format=True), name="forest"
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["converted_to"] == "onnx"
    assert created["format"] == "sklearn"
    assert created["status"] == "ready"
    answer = world.predict("root", created["model_id"], {"input": x[:30].tolist()}).json()
    got = np.asarray(answer["output"]).reshape(-1)
    np.testing.assert_allclose(got, model.predict(x[:30]), rtol=1e-4, atol=1e-4)


def test_pickle_from_a_non_admin_is_refused_and_leaves_nothing(world: World) -> None:
    model, _ = sklearn_classifier()
    before = world.client.get("/api/v1/models", headers=world.h("bob")).json()
    refused = world.upload("bob", "clf.pkl", pickled(model), name="sneaky")
    assert refused.status_code == 403
    assert "ALLOW_PICKLE_MODELS" in refused.json()["detail"]
    declared = world.upload("bob", "clf.bin", pickled(model), name="sneaky", format="sklearn")
    assert declared.status_code == 403
    after = world.client.get("/api/v1/models", headers=world.h("bob")).json()
    assert after["count"] == 0
    assert after["quota"] == before["quota"]  # refused uploads use no quota
    assert files_under(world.data_dir / "uploads") == []


def test_torchscript_is_converted_and_matches_torch(world: World) -> None:
    torch = need_torch()
    scripted, state_dict, module = torchscript(torch)
    response = world.upload(
        "alice", "tiny.pt", scripted, name="tiny", format="pytorch", input_shape="1,4"
    )
    assert response.status_code == 201, response.text
    assert response.json()["converted_to"] == "onnx"
    x = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    answer = world.predict("alice", "tiny", {"input": x.tolist()}).json()
    np.testing.assert_allclose(answer["output"], expected, atol=TOL)
    one = world.predict("alice", "tiny", {"input": x[0].tolist()}).json()
    np.testing.assert_allclose(one["output"], expected[0], atol=TOL)

    bare = world.upload("alice", "weights.pth", state_dict, name="weights", input_shape="1,4")
    assert bare.status_code == 400
    assert "state dict" in bare.json()["detail"]
    no_shape = world.upload("alice", "tiny2.pt", scripted, name="tiny2")
    assert no_shape.status_code == 400
    assert "input_shape" in no_shape.json()["detail"]


@pytest.mark.parametrize(
    ("filename", "content", "fields", "needle"),
    [
        ("junk.onnx", b"\x00\x01 not a model at all", {}, "not a valid ONNX model"),
        ("cut.onnx", dense_onnx()[0][:-40], {}, "ONNX"),
        ("junk.pt", b"PK\x03\x04broken zip", {"input_shape": "1,4"}, "TorchScript"),
        ("model.h5", b"HDF", {}, "cannot tell the format"),
        ("model.onnx", b"x", {"format": "tensorflow"}, "tf2onnx"),
        ("model.onnx", b"x", {"format": "pytorch"}, "does not match"),
        ("model.onnx", b"x", {"name": "../etc"}, "name"),
        ("model.onnx", b"x", {"input_shape": "a,b"}, "input_shape"),
    ],
)
def test_bad_uploads_are_4xx_and_leave_nothing(
    world: World, filename: str, content: bytes, fields: dict[str, str], needle: str
) -> None:
    if filename.endswith(".pt"):
        need_torch()
    before = world.client.get("/api/v1/models", headers=world.h("bob")).json()
    response = world.upload("bob", filename, content, **fields)
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]
    after = world.client.get("/api/v1/models", headers=world.h("bob")).json()
    assert after == before
    assert files_under(world.data_dir / "uploads") == []
    assert str(world.data_dir) not in response.json()["detail"]  # no server paths


def test_fields_after_the_file_count(world: World) -> None:
    """curl sends fields in the order given: the format may come after the file."""
    model, _ = sklearn_classifier()
    boundary = "----models-test-boundary"
    body = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="model"; filename="clf.bin"\r\n',
            b"Content-Type: application/octet-stream\r\n\r\n",
            pickled(model),
            f"\r\n--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="format"\r\n\r\nsklearn',
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    headers = {**world.h("bob"), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = world.client.post("/api/v1/models/upload", content=body, headers=headers)
    assert response.status_code == 403, response.text
    content, _ = dense_onnx(seed=5)
    named_last = body.replace(pickled(model), content).replace(b"clf.bin", b"late.onnx")
    named_last = named_last.replace(b'name="format"\r\n\r\nsklearn', b'name="name"\r\n\r\nlate')
    created = world.client.post("/api/v1/models/upload", content=named_last, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "late"
    assert world.client.delete("/api/v1/models/late", headers=world.h("bob")).status_code == 200
    assert files_under(world.data_dir / "uploads") == []


def test_upload_needs_multipart_a_file_and_credentials(world: World) -> None:
    no_auth = world.client.post("/api/v1/models/upload", files={"model": ("a.onnx", b"x")})
    assert no_auth.status_code == 401
    as_json = world.client.post("/api/v1/models/upload", json={}, headers=world.h("bob"))
    assert as_json.status_code == 400
    no_file = world.client.post(
        "/api/v1/models/upload", files={"name": (None, "x")}, headers=world.h("bob")
    )
    assert no_file.status_code == 400
    assert "model file" in no_file.json()["detail"]


def test_names_are_unique_per_owner(world: World, dense: tuple[str, Any]) -> None:
    content, _ = dense_onnx()
    taken = world.upload("alice", "again.onnx", content, name="dense")
    assert taken.status_code == 409
    other_owner = world.upload("bob", "dense.onnx", content, name="dense")
    assert other_owner.status_code == 201
    world.client.delete("/api/v1/models/dense", headers=world.h("bob"))


# ------------------------------------------------------------------ predictions


def test_wrong_shapes_and_types_name_the_signature(world: World, dense: tuple[str, Any]) -> None:
    model_id, _ = dense
    cases = [
        ({"input": [1.0, 2.0, 3.0]}, "has shape [1, 3]"),
        ({"input": [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]]}, "ragged"),
        ({"input": ["a", "b", "c", "d"]}, "text"),
        ({"input": [[[1.0, 2.0, 3.0, 4.0]]]}, "has shape [1, 1, 4]"),
        ({"input": {"nope": [1, 2, 3, 4]}}, "not an input"),
        ({"input": [1, 2, 3, 4], "outputs": ["z"]}, "not an output"),
    ]
    for body, needle in cases:
        response = world.predict("alice", model_id, body)
        assert response.status_code == 400, (body, response.text)
        detail = response.json()["detail"]
        assert needle in detail, detail
        if "not an output" not in needle:
            assert "x: FP32[?, 4]" in detail  # the expected signature is named
    assert world.predict("alice", model_id, {}).status_code == 400


def test_integer_inputs_refuse_lossy_values(world: World) -> None:
    response = world.upload("alice", "two.onnx", two_input_onnx(), name="two")
    assert response.status_code == 201, response.text
    good = world.predict(
        "alice", "two", {"input": {"a": [[1, 2]], "b": [[0.5, 0.5]], "n": [3]}}
    ).json()
    assert good["outputs"] == {"sum": [[1.5, 2.5]], "count": [3]}
    row = world.predict("alice", "two", {"input": {"a": [1, 2], "b": [3, 4], "n": 7}}).json()
    assert row["outputs"] == {"sum": [4.0, 6.0], "count": 7}
    for n in ([1.5], [2**70], [True]):
        bad = world.predict("alice", "two", {"input": {"a": [[1, 2]], "b": [[0, 0]], "n": n}})
        assert bad.status_code == 400, bad.text
    bare = world.predict("alice", "two", {"input": [1, 2]})
    assert bare.status_code == 400
    assert "3 inputs" in bare.json()["detail"]
    mixed = world.predict("alice", "two", {"input": {"a": [1, 2], "b": [[3, 4]], "n": [1]}})
    assert mixed.status_code == 400


def test_other_users_models_are_not_found(world: World, dense: tuple[str, Any]) -> None:
    model_id, _ = dense
    for ref in (model_id, "dense"):
        assert world.client.get(f"/api/v1/models/{ref}", headers=world.h("bob")).status_code == 404
        assert world.predict("bob", ref, {"input": [1, 2, 3, 4]}).status_code == 404
        gone = world.client.delete(f"/api/v1/models/{ref}", headers=world.h("bob"))
        assert gone.status_code == 404
    listed = world.client.get("/api/v1/models", headers=world.h("bob")).json()
    assert model_id not in {m["model_id"] for m in listed["models"]}
    assert world.predict("alice", model_id, {"input": [1, 2, 3, 4]}).status_code == 200


def test_delete_removes_record_file_and_session(world: World) -> None:
    content, _ = dense_onnx(seed=9)
    created = world.upload("alice", "gone.onnx", content, name="gone").json()
    model_id = created["model_id"]
    assert world.predict("alice", model_id, {"input": [1, 2, 3, 4]}).status_code == 200
    service = world.c.model_service()
    assert model_id in service.engine.cached()  # type: ignore[attr-defined]
    stored = [f for f in files_under(world.data_dir / "models") if model_id in f]
    assert len(stored) == 1
    deleted = world.client.delete(f"/api/v1/models/{model_id}", headers=world.h("alice"))
    assert deleted.json() == {"model_id": model_id, "name": "gone", "deleted": True}
    assert [f for f in files_under(world.data_dir / "models") if model_id in f] == []
    assert model_id not in service.engine.cached()  # type: ignore[attr-defined]
    assert world.predict("alice", model_id, {"input": [1, 2, 3, 4]}).status_code == 404


def test_predictions_are_counted_into_usage(world: World, dense: tuple[str, Any]) -> None:
    model_id, _ = dense
    service = world.c.model_service()
    service.flush()
    for _ in range(3):
        world.predict("alice", model_id, {"input": [1, 2, 3, 4]})
    world.predict("alice", model_id, {"input": [1, 2]})  # refused before running: not counted
    assert service.flush() == 1
    world.c.runner.catch_up()
    with world.c.db.read() as tx:
        row = tx.fetchone(
            "SELECT owner, provider, requests, errors FROM proxy_load WHERE instance_id = ?",
            (model_id,),
        )
    assert row is not None
    assert row[0] == world.ids["alice"]
    assert row[1] == "model"
    assert int(row[2]) >= 3
    assert int(row[3]) == 0


# ------------------------------------------------------------------ OIP v2 over REST (JSON)


def test_oip_rest_json(world: World, dense: tuple[str, Any]) -> None:
    model_id, reference = dense
    client, h = world.client, world.h("alice")
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
    meta = client.get("/v2/models/dense", headers=h).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["versions"] == ["1"]
    assert client.get(f"/v2/models/{model_id}/ready", headers=h).json()["ready"] is True
    assert client.get("/v2/models/dense/versions/1/ready", headers=h).status_code == 200
    assert client.get("/v2/models/dense/versions/2/ready", headers=h).status_code == 404
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    body = {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
    }
    answer = client.post("/v2/models/dense/infer", json=body, headers=h)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["id"] == "req-1"
    assert out["model_name"] == "dense"
    assert out["outputs"][0]["shape"] == [3, 3]
    assert out["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.asarray(out["outputs"][0]["data"]).reshape(3, 3), reference(x), atol=TOL
    )
    wrong_type = {"inputs": [{**body["inputs"][0], "datatype": "FP64"}]}  # type: ignore[dict-item]
    refused = client.post("/v2/models/dense/infer", json=wrong_type, headers=h)
    assert refused.status_code == 400
    assert "FP32" in refused.json()["error"]
    short = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [1.0]}]}
    assert client.post("/v2/models/dense/infer", json=short, headers=h).status_code == 400
    row = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert client.post("/v2/models/dense/infer", json=row, headers=h).status_code == 400
    assert client.post("/v2/models/dense/infer", json=body).status_code == 401
    assert (
        client.post("/v2/models/dense/infer", json=body, headers=world.h("bob")).status_code == 404
    )
    assert client.post("/v2/models/dense/infer", content=b"{", headers=h).status_code == 400


# ------------------------------------------------------------------ engine details


def test_session_cache_is_bounded(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)
    small, _ = dense_onnx(seed=1, pad=100_000)  # about 400 kB each
    with make_world(
        settings, models=dataclasses.replace(settings.models, cache_bytes=1_048_576)
    ) as w:
        ids = []
        for n in range(3):
            created = w.upload("alice", f"m{n}.onnx", small, name=f"m{n}")
            assert created.status_code == 201, created.text
            ids.append(created.json()["model_id"])
            assert w.predict("alice", ids[-1], {"input": [1, 2, 3, 4]}).status_code == 200
        cached = w.c.model_service().engine.cached()  # type: ignore[attr-defined]
        assert sum(cached.values()) <= 1_048_576
        assert ids[0] not in cached
        assert ids[2] in cached
        assert w.predict("alice", ids[0], {"input": [1, 2, 3, 4]}).status_code == 200  # reloads


def test_dynamic_batching_gives_each_caller_its_rows(tmp_path: Path) -> None:
    import asyncio

    settings = load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)
    content, reference = dense_onnx(seed=4)
    with make_world(
        settings,
        models=dataclasses.replace(
            settings.models, batching=True, batch_wait_ms=20.0, batch_max_rows=64
        ),
    ) as w:
        model_id = w.upload("alice", "b.onnx", content, name="b").json()["model_id"]
        service = w.c.model_service()
        rng = np.random.default_rng(11)
        inputs = [rng.standard_normal((1 + n % 3, 4)).astype(np.float32) for n in range(24)]

        async def burst() -> list[Any]:
            calls = [service.predict(w.ids["alice"], model_id, {"x": x.tolist()}) for x in inputs]
            results = await asyncio.gather(*calls)
            await service.engine.aclose()
            return [r[1] for r in results]

        results = asyncio.run(burst())
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_allclose(result.outputs["y"], reference(x), atol=TOL)
        batches = service.engine.batcher.stats()  # type: ignore[attr-defined]
        runs, rows = batches[model_id]
        assert rows == sum(len(x) for x in inputs)
        assert runs < len(inputs)  # stacked, not one run per request


def test_storage_backend_settings_are_checked() -> None:
    from infrastructure.settings import ConfigError

    with pytest.raises(ConfigError, match="OCI_STORAGE_BUCKET"):
        load_settings({"STORAGE_BACKEND": "oci"}, env_file=None)
    with pytest.raises(ConfigError, match="STORAGE_BACKEND"):
        load_settings({"STORAGE_BACKEND": "s3"}, env_file=None)
    with pytest.raises(ConfigError, match="MODEL_LEASE_AMOUNT"):
        load_settings({"MODEL_PREDICT_PRICE": "5", "MODEL_LEASE_AMOUNT": "1"}, env_file=None)
    s = load_settings({}, env_file=None)
    assert (s.models.storage_quota_bytes, s.models.max_upload_bytes) == (100 * 10**9, 10 * 10**9)
    assert (s.models.uploads_per_hour, s.models.uploads_per_day) == (50, 500)
    assert s.models.allow_pickle is False
    assert s.models.predict_price == 0


# ------------------------------------------------------------------ rules


def test_upload_rules() -> None:
    from domain.models import (
        PickleNotAllowedError,
        QuotaExceededError,
        QuotaUsage,
        UploadFormError,
        UploadLimits,
        format_of,
        may_upload,
        parse_shape,
    )

    assert format_of("m.PTH", None) == "pytorch"
    assert format_of("model.bin", "sklearn") == "sklearn"
    assert parse_shape("[1, 3, 224, 224]") == (1, 3, 224, 224)
    assert parse_shape("1x4") == (1, 4)
    for bad in ("", "0,4", "1,2,3,4,5,6,7,8,9", "-1,4"):
        with pytest.raises(UploadFormError):
            parse_shape(bad)
    may_upload("sklearn", is_admin=True, allow_pickle=False)
    may_upload("sklearn", is_admin=False, allow_pickle=True)  # ALLOW_PICKLE_MODELS=true
    may_upload("onnx", is_admin=False, allow_pickle=False)
    with pytest.raises(PickleNotAllowedError):
        may_upload("sklearn", is_admin=False, allow_pickle=False)
    limits = UploadLimits(total_bytes=100, file_bytes=50, per_hour=1, per_day=2)
    assert limits.admit(QuotaUsage(40, 0, 1)) == 60
    for usage, quota, status in (
        (QuotaUsage(0, 1, 1), "uploads_per_hour", 429),
        (QuotaUsage(0, 0, 2), "uploads_per_day", 429),
        (QuotaUsage(100, 0, 0), "storage_bytes", 413),
    ):
        with pytest.raises(QuotaExceededError) as refused:
            limits.admit(usage)
        assert (refused.value.details["quota"], refused.value.status) == (quota, status)
