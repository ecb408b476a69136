"""Small helpers for the benchmarks: closed-loop concurrent load, timers, machine facts, and
waiting for a quiet machine before a measurement."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Op = Callable[[int], None]


@dataclass
class LoadResult:
    """What a closed-loop run measured inside its measurement window."""

    threads: int
    seconds: float
    ops: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "seconds": round(self.seconds, 3),
            "ops": self.ops,
            "ops_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(0.50), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "errors": self.errors[:5],
        }


def closed_loop(
    threads: int,
    make_op: Callable[[int], Op],
    *,
    warmup: float,
    seconds: float,
    teardown: Callable[[int], None] | None = None,
) -> LoadResult:
    """Run ``threads`` clients, each calling its op back to back (the next call starts when
    the previous one returned, i.e. was acknowledged). Ops completed between the end of the
    warm-up and the end of the window are counted; their latencies are kept.
    """
    counts = [0] * threads
    measuring = threading.Event()
    stop = threading.Event()
    ready = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def worker(index: int) -> None:
        try:
            op = make_op(index)
        except BaseException as exc:
            errors.append(f"setup: {exc!r}")
            ready.abort()
            return
        ready.wait()
        seq = 0
        mine = latencies[index]
        try:
            while not stop.is_set():
                start = time.perf_counter()
                op(seq)
                if measuring.is_set():
                    mine.append((time.perf_counter() - start) * 1000)
                seq += 1
                counts[index] += 1
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            if teardown is not None:
                teardown(index)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    time.sleep(warmup)
    before, t0 = sum(counts), time.perf_counter()
    measuring.set()
    time.sleep(seconds)
    after, t1 = sum(counts), time.perf_counter()
    measuring.clear()
    stop.set()
    for w in workers:
        w.join(timeout=60)
    merged = [x for lat in latencies for x in lat]
    return LoadResult(threads, t1 - t0, after - before, merged, errors)


def timings_ms(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def describe(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
        "min_ms": round(ordered[0], 4),
    }


def machine_facts() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# ------------------------------------------------------------------ quiet machine


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Quiet:
    """Before each measurement, wait until the 1-minute load average is below ``below``.

    All waits of one run share one deadline (``max_wait`` seconds from the start, or the
    epoch seconds in ``$BENCH_WAIT_UNTIL`` so that ``make bench`` shares it between the
    ledger and the HTTP benchmark). Past the deadline, measurements start at once. Either
    way the load average before the wait, at the start and at the end is recorded.
    """

    below: float = 1.0
    deadline: float = 0.0  # time.time() seconds; 0 = never wait
    poll_s: float = 5.0

    @classmethod
    def for_run(cls, *, enabled: bool, below: float, max_wait: float) -> Quiet:
        if not enabled:
            return cls(below, 0.0)
        shared = os.environ.get("BENCH_WAIT_UNTIL", "")
        return cls(below, float(shared) if shared else time.time() + max_wait)

    def wait(self, label: str) -> dict[str, Any]:
        before, start = loadavg(), time.time()
        if self.deadline and before[0] >= self.below and start < self.deadline:
            print(
                f"[{label}] waiting for load average < {self.below} (now {before[0]}, "
                f"at most {self.deadline - start:.0f} s more) ...",
                file=sys.stderr,
                flush=True,
            )
        while self.deadline and os.getloadavg()[0] >= self.below:
            left = self.deadline - time.time()
            if left <= 0:
                break
            time.sleep(min(self.poll_s, left))
        at_start = loadavg()
        return {
            "label": label,
            "load_before_wait": before,
            "waited_s": round(time.time() - start, 1),
            "load_at_start": at_start,
            "quiet": at_start[0] < self.below,
        }

    @contextlib.contextmanager
    def measure(self, label: str, into: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Wait, run the block, record ``into["load"]`` = what ``wait`` saw + load at the end."""
        record = self.wait(label)
        into["load"] = record
        print(
            f"[{label}] measuring (load average {record['load_at_start']}, waited "
            f"{record['waited_s']} s)",
            file=sys.stderr,
            flush=True,
        )
        try:
            yield record
        finally:
            record["load_after"] = loadavg()
