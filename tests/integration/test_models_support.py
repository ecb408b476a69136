"""Helpers for the model-serving tests: a world of users over the real app, and models made
here (ONNX graphs built with ``onnx.helper``, scikit-learn models trained now, TorchScript).

No tests live here; the ``test_models*`` modules import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from litestar.testing import TestClient
from onnx import TensorProto, helper

from domain.models import ModelRecord, Signature, TensorSpec
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.support.http import JWT_SECRET

USD = 1_000_000
PASSWORD = "correct-horse-battery"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclasses.dataclass
class World:
    client: TestClient[Any]
    c: Container
    keys: dict[str, str]  # user name -> API key
    ids: dict[str, str]  # user name -> user id

    def h(self, user: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[user]}

    def upload(
        self, user: str, filename: str, content: bytes, **fields: str
    ) -> Any:  # httpx.Response
        return self.client.post(
            "/api/v1/models/upload",
            files={"model": (filename, content, "application/octet-stream")},
            data=fields,
            headers=self.h(user),
        )

    def predict(self, user: str, model: str, body: dict[str, Any]) -> Any:
        return self.client.post(f"/api/v1/models/{model}/predict", json=body, headers=self.h(user))

    @property
    def data_dir(self) -> Path:
        return self.c.settings.db.data_dir


def add_user(c: Container, name: str, *, credits: int = 0, admin: bool = False) -> tuple[str, str]:
    email = f"{name}@example.com"
    user = c.users.create(email, PASSWORD, name.title())
    c.ledger.open_account(user.id)
    if credits:
        c.ledger.grant(user.id, credits, key=f"seed-{name}")
    if admin:
        c.users.set_admin(email)
    return user.id, c.auth.keys.create(user.id, "models-test")[1]


@contextlib.contextmanager
def make_world(settings: Settings, clock: Any = None, **groups: Any) -> Iterator[World]:
    tuned = dataclasses.replace(settings, **groups)
    tuned = dataclasses.replace(
        tuned,
        auth=dataclasses.replace(tuned.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000),
    )
    c = bootstrap(tuned, clock=clock) if clock is not None else bootstrap(tuned)
    try:
        keys, ids = {}, {}
        for name, credits, admin in (("alice", 100 * USD, False), ("bob", 0, False)):
            ids[name], keys[name] = add_user(c, name, credits=credits, admin=admin)
        ids["root"], keys["root"] = add_user(c, "root", credits=100 * USD, admin=True)
        with TestClient(create_app(c)) as client:
            yield World(client, c, keys, ids)
    finally:
        c.close()


# ------------------------------------------------------------------ models


def dense_onnx(n_in: int = 4, n_out: int = 3, *, seed: int = 0, pad: int = 0) -> tuple[bytes, Any]:
    """softmax(x @ W + b) as ONNX (opset 17, dynamic batch); and a numpy reference.

    ``pad``: extra float32 values in an unused initializer, to make the file bigger.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
        helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
    ]
    if pad:
        filler = rng.standard_normal(pad).astype(np.float32)
        inits.append(helper.make_tensor("PAD", TensorProto.FLOAT, filler.shape, filler))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
        ],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)

    def reference(x: Any) -> Any:
        logits = np.asarray(x, dtype=np.float32) @ w + b
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    return model.SerializeToString(), reference


def two_input_onnx() -> bytes:
    """y = a + b (FP32[?,2] each), count = INT64 input passed through."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Identity", ["n"], ["count"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def sklearn_classifier(seed: int = 0) -> tuple[Any, np.ndarray]:
    """A scikit-learn pipeline (scaler + logistic regression) trained now, and its data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(np.int64)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y), x


def sklearn_regressor(seed: int = 1) -> tuple[Any, np.ndarray]:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    y = x[:, 0] * 2 - x[:, 2] + rng.standard_normal(200) * 0.1
    return RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0).fit(x, y), x


def sklearn_to_onnx(model: Any, n_features: int) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
    )
    return bytes(onx.SerializeToString())


def pickled(model: Any, *, joblib_format: bool = False) -> bytes:
    buffer = io.BytesIO()
    if joblib_format:
        import joblib

        joblib.dump(model, buffer)
    else:
        pickle.dump(model, buffer)
    return buffer.getvalue()


def need_torch() -> Any:
    """torch, or a skip on a laptop without it (under CI torch must be installed)."""
    if IN_CI:
        import torch

        return torch
    return pytest.importorskip("torch")


def torchscript(torch: Any) -> tuple[bytes, bytes, Any]:
    """A tiny TorchScript MLP (4 → 8 → 3, softmax), its bare state dict, and the module."""

    class Tiny(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(4, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x):  # unannotated: TorchScript takes x as a Tensor
            return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=-1)

    torch.manual_seed(0)
    module = Tiny().eval()
    with warnings.catch_warnings():  # torch.jit.script is deprecated in favour of torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    weights = io.BytesIO()
    torch.save(module.state_dict(), weights)
    return buffer.getvalue(), weights.getvalue(), module


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def stored_dense(folder: Path, model_id: str = "m1", content: bytes | None = None) -> ModelRecord:
    """``dense_onnx()`` (or ``content``) stored under ``folder`` (a ``LocalStorage`` root) and
    its record."""
    content = content if content is not None else dense_onnx()[0]
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / f"{model_id}.onnx").write_bytes(content)
    return ModelRecord(
        model_id,
        "owner",
        "dense",
        "onnx",
        "dense.onnx",
        len(content),
        len(content),
        f"models/{model_id}.onnx",
        "local",
        hashlib.sha256(content).hexdigest(),
        Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 3)),)),
        datetime.now(UTC),
    )
