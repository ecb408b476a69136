"""A tiny model runs on the event loop once measured cheap; anything else stays in the pool."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from infrastructure.models import engine as engine_module
from infrastructure.models.engine import INLINE_AFTER, OnnxEngine
from infrastructure.models.storage import LocalStorage
from tests.integration.test_models_support import stored_dense

ROW = [0.5, -1.0, 2.0, 0.25]


def test_cheap_runs_go_inline_after_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # how fast this machine is right now does not matter here: a budget no run exceeds
    monkeypatch.setattr(engine_module, "INLINE_BUDGET_S", 1.0)
    record = stored_dense(tmp_path)
    threads: list[str] = []

    async def scenario() -> None:
        engine = OnnxEngine(LocalStorage(tmp_path), cache_bytes=1 << 30, execution_provider="cpu")
        session = await engine.session(record)
        original = session.session

        class Spy:
            def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                threads.append(threading.current_thread().name)
                result: list[np.ndarray] = original.run(names, feeds)
                return result

        session.session = Spy()
        reference = None
        for _ in range(INLINE_AFTER + 4):
            prediction = await engine.run(record, engine.prepare(record, {"x": ROW}))
            out = prediction.outputs["y"]
            reference = out if reference is None else reference
            np.testing.assert_allclose(out, reference)
        # a batch big enough to cost more than the budget goes back to the pool
        assert not session.inline(int(2.0 / max(session.per_row, 1e-9)))
        await engine.aclose()

    asyncio.run(scenario())
    pool = [name for name in threads if name.startswith("onnx")]
    loop = [name for name in threads if not name.startswith("onnx")]
    assert len(pool) == INLINE_AFTER, threads
    assert len(loop) == 4, threads


def test_a_slow_or_gpu_session_never_runs_inline(tmp_path: Path) -> None:
    record = stored_dense(tmp_path)

    async def scenario() -> None:
        engine = OnnxEngine(LocalStorage(tmp_path), cache_bytes=1 << 30, execution_provider="cpu")
        session = await engine.session(record)
        session.measured, session.per_row = INLINE_AFTER, engine_module.INLINE_BUDGET_S * 2
        assert not session.inline(1)
        session.per_row = 0.0
        assert session.inline(1)
        session.on_cpu = False
        assert not session.inline(1)
        await engine.aclose()

    asyncio.run(scenario())
