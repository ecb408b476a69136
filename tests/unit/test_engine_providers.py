"""Which execution providers a session asks for, and the CUDA libraries loaded first.

The CUDA path itself runs in ``tests/integration/test_models_gpu.py`` (on a GPU machine); here
ONNX Runtime's answers are replaced so the choice can be checked on any machine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnxruntime as ort
import pytest

from infrastructure.models import engine
from infrastructure.models.engine import CPU, CUDA, preload_cuda, providers


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    made: list[str] = []

    def preload() -> None:
        made.append("preload")
        print("Failed to load libcudnn.so.9: not found")  # what ORT prints on a failure

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    preload_cuda.cache_clear()
    yield made
    preload_cuda.cache_clear()


def test_auto_with_cuda_preloads_the_libraries_once_and_keeps_float32(
    calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=engine.__name__):
        assert providers("auto") == [(CUDA, {"use_tf32": "0"}), CPU]
        assert providers("auto", tf32=True) == [(CUDA, {"use_tf32": "1"}), CPU]
    assert calls == ["preload"]
    assert "libcudnn.so.9" in caplog.text  # ORT's printout lands in the log


def test_cpu_mode_neither_asks_for_cuda_nor_loads_it(calls: list[str]) -> None:
    assert providers("cpu") == [CPU]
    assert calls == []


def test_a_failing_preload_still_asks_for_cuda(
    monkeypatch: pytest.MonkeyPatch, calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise OSError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", broken, raising=False)
    with caplog.at_level(logging.WARNING, logger=engine.__name__):
        assert providers("auto") == [(CUDA, {"use_tf32": "0"}), CPU]
    assert "could not preload" in caplog.text


def test_without_cuda_nothing_is_loaded(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert providers("auto") == [CPU]
    assert calls == []
