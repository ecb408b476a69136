"""The CUDA execution provider (``onnxruntime-gpu``): used when present, reported truthfully.

Marked ``gpu``; skipped where ONNX Runtime has no CUDA provider or no GPU answers. Run on a
GPU machine with ``pip install -e '.[gpu]'`` (the CPU ``onnxruntime`` removed first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infrastructure.settings import load_settings
from tests.integration.test_models_support import (
    World,
    dense_onnx,
    make_world,
    sklearn_classifier,
    sklearn_to_onnx,
)

ort = pytest.importorskip("onnxruntime")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="onnxruntime has no CUDA execution provider here (install the gpu extra)",
    ),
]


@pytest.fixture
def gpu_world(tmp_path: Path) -> Iterator[World]:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)
    with make_world(settings) as w:
        yield w


def _cuda_session(w: World) -> Any:
    session = next(iter(w.c.model_service().engine._sessions.values()))  # type: ignore[attr-defined]
    if session.session.get_providers()[0] != "CUDAExecutionProvider":
        pytest.skip("the CUDA provider is installed but could not start (no usable GPU)")
    return session.session


def test_dense_model_runs_on_cuda_in_float32_and_says_so(gpu_world: World) -> None:
    w = gpu_world
    content, reference = dense_onnx(n_in=256, n_out=16, seed=3)
    assert w.upload("alice", "d.onnx", content, name="d").status_code == 201
    x = np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32)
    answer = w.predict("alice", "d", {"input": x.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    session = _cuda_session(w)
    assert session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    assert body["used_gpu"] is True
    # float32 accuracy: TF32 (the provider's own default) misses this by ~100x on a 256-deep sum
    np.testing.assert_allclose(body["output"], reference(x), atol=2e-5)


def test_tf32_when_asked(tmp_path: Path) -> None:
    settings = load_settings(
        {"DATA_DIR": str(tmp_path / "data"), "MODEL_CUDA_TF32": "true"}, env_file=None
    )
    with make_world(settings) as w:
        content, reference = dense_onnx(n_in=256, n_out=16, seed=3)
        assert w.upload("alice", "d.onnx", content, name="d").status_code == 201
        x = np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32)
        body = w.predict("alice", "d", {"input": x.tolist()}).json()
        assert _cuda_session(w).get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "1"
        assert body["used_gpu"] is True
        np.testing.assert_allclose(body["output"], reference(x), atol=1e-2)


def test_ml_operators_report_cpu_even_with_cuda(gpu_world: World) -> None:
    """scikit-learn graphs use ``ai.onnx.ml`` operators, which have no CUDA kernels."""
    w = gpu_world
    model, x = sklearn_classifier()
    assert w.upload("alice", "c.onnx", sklearn_to_onnx(model, 4), name="c").status_code == 201
    body = w.predict("alice", "c", {"input": x[:4].tolist()}).json()
    assert body["used_gpu"] is False
    np.testing.assert_allclose(
        body["outputs"]["probabilities"], model.predict_proba(x[:4]), atol=1e-5
    )


def test_cpu_mode_never_asks_for_cuda(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)
    with make_world(
        settings, models=dataclasses.replace(settings.models, execution_provider="cpu")
    ) as w:
        content, _ = dense_onnx()
        assert w.upload("alice", "d.onnx", content, name="d").status_code == 201
        assert w.predict("alice", "d", {"input": [1, 2, 3, 4]}).json()["used_gpu"] is False
