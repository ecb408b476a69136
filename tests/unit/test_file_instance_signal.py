"""The embedded set-up's instance signal: one ``stat`` per event-loop tick, never a stale tick."""

from __future__ import annotations

import asyncio
from pathlib import Path

from infrastructure.proxy.instance_signal import FileInstanceSignal


def _bump_elsewhere(path: Path) -> None:
    """Another process's bump: the file grows, this object is not told."""
    with path.open("ab") as handle:
        handle.write(b".")


def test_outside_an_event_loop_every_read_stats(tmp_path: Path) -> None:
    path = tmp_path / "instances.epoch"
    signal = FileInstanceSignal(path)
    assert signal.read("u") == 0
    _bump_elsewhere(path)
    assert signal.read("u") == 1


def test_a_tick_reads_once_and_the_next_tick_sees_another_process_bump(tmp_path: Path) -> None:
    path = tmp_path / "instances.epoch"
    signal = FileInstanceSignal(path)

    async def main() -> list[object]:
        seen = [signal.read("u")]
        _bump_elsewhere(path)
        seen.append(signal.read("v"))  # the same tick: the value read at its start
        await asyncio.sleep(0)  # the next tick, as any later request is handled in
        seen.append(signal.read("u"))
        _bump_elsewhere(path)
        await asyncio.sleep(0)
        seen.append(signal.read("u"))
        return seen

    assert asyncio.run(main()) == [0, 0, 1, 2]


def test_a_bump_in_this_process_is_read_at_once(tmp_path: Path) -> None:
    signal = FileInstanceSignal(tmp_path / "instances.epoch")

    async def main() -> list[object]:
        first = signal.read("u")
        signal.bump("u")
        return [first, signal.read("u")]

    assert asyncio.run(main()) == [0, 1]


def test_a_new_event_loop_after_the_first_closed_still_reads_fresh(tmp_path: Path) -> None:
    path = tmp_path / "instances.epoch"
    signal = FileInstanceSignal(path)

    async def read() -> object:
        return signal.read("u")

    assert asyncio.run(read()) == 0
    _bump_elsewhere(path)
    assert signal.read("u") == 1  # between loops: no keeping
    _bump_elsewhere(path)
    assert asyncio.run(read()) == 2


def test_a_loop_stopped_within_its_tick_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "instances.epoch"
    signal = FileInstanceSignal(path)
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(signal.read, "u")  # read, then the loop stops before its next tick
        loop.call_soon(loop.stop)
        loop.run_forever()
        _bump_elsewhere(path)
        assert signal.read("u") == 1
    finally:
        loop.close()
