"""A stuck shutdown step is given up on after its time, so the server still stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from interfaces.http import app as app_module


def test_a_stuck_step_is_abandoned_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "SHUTDOWN_STEP_SECONDS", 0.05)
    finished: list[str] = []

    async def stuck() -> None:
        await asyncio.Event().wait()

    async def quick() -> None:
        finished.append("quick")

    async def scenario() -> None:
        await app_module._bounded("stuck step", stuck())
        await app_module._bounded("quick step", quick())

    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(scenario(), 5))
    assert finished == ["quick"]
    assert "stuck step took over" in caplog.text
    assert "quick step" not in caplog.text
