"""``WORKERS=N``: N server processes sharing the listening sockets, watched by a supervisor.

The parent binds ``PORT`` (and ``GRPC_PORT``) once, then forks N workers before any database
connection, thread or event loop exists. Each worker runs the whole server (HTTP, WebSocket
and gRPC on the inherited sockets, its own event loop, container and connection pool); the
kernel hands each new connection to one of them. Background singletons are elected through
PostgreSQL advisory locks, so they run once however many workers and replicas there are.

The parent only supervises: a worker that exits while the server is running is replaced
(after a delay that grows while workers keep dying within seconds of their start, and the
server gives up after ``GIVE_UP_AFTER`` such quick deaths in a row, e.g. a database that
refuses every start-up). ``SIGTERM``/``SIGINT`` to the parent are passed on to every worker
as one ``SIGTERM`` (a graceful drain), and the parent exits when they have. Workers live in a
process group of their own, so a terminal's Ctrl-C reaches only the parent, and on Linux each
worker gets ``SIGTERM`` when the parent dies (``PR_SET_PDEATHSIG``): no orphan keeps the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("aiserve.workers")
QUICK_DEATH_SECONDS = 10.0  # a worker that dies sooner than this after its start died young
GIVE_UP_AFTER = 5  # quick deaths in a row
MAX_RESTART_DELAY = 30.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent exits (no orphaned workers)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Forks ``count`` workers running ``serve`` (returns an exit code) and keeps them up."""

    restart_delay = 0.5  # seconds after the first quick death, doubling with each next one

    def __init__(self, count: int, serve: Callable[[], int]) -> None:
        self.count = count
        self.serve = serve
        self.workers: dict[int, float] = {}  # pid -> start time (monotonic)
        self.stopping = False
        self.quick_deaths = 0

    def _spawn(self) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.setpgid(0, 0)
                _die_with_parent()
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                code = self.serve()
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = time.monotonic()
        log.info("worker %d started", pid)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: stopping %d worker(s)", signal.Signals(signum).name, len(self.workers))
        self.stopping = True
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> int:
        """Run until told to stop (0) or until workers keep dying at start-up (1)."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for _ in range(self.count):
            self._spawn()
        failed = False
        while self.workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = self.workers.pop(pid, None)
            if started is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - started
            self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            log.error("worker %d exited (%s) after %.1f s", pid, _describe(code), lived)
            if self.quick_deaths >= GIVE_UP_AFTER:
                log.error("workers keep dying at start-up: stopping")
                failed = True
                self._stop(signal.SIGTERM, None)
                continue
            if self._pause(
                min(MAX_RESTART_DELAY, self.restart_delay * 2 ** (self.quick_deaths - 1))
            ):
                self._spawn()
        return 1 if failed else 0

    def _pause(self, seconds: float) -> bool:
        """Wait before a restart (none after a worker that lived long); False if stopping."""
        deadline = time.monotonic() + (seconds if self.quick_deaths else 0.0)
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.stopping


def _describe(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
