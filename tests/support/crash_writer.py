"""A writer (and optionally projection runner) process that the crash tests SIGKILL.

Run from the repository root as ``python -m tests.support.crash_writer``. Configuration
comes from the environment: the service's ``DB_*`` / ``DATA_DIR`` variables and

- ``CRASH_PREFIX``: prefix of users and keys (unique per process);
- ``CRASH_SHARED_USER``: an account all threads (and processes) write to;
- ``CRASH_THREADS``: writer threads (0: write nothing, only run projections);
- ``CRASH_GRANT`` / ``CRASH_CHARGE``: amounts (micro-USD) of each grant and charge;
- ``CRASH_PROJECTIONS``: ``1`` to run the projection runner (``run_projections=True``);
- ``CRASH_MAX_SECONDS``: stop on its own after this long (a safety net; default 60).

Each writer thread loops: grant then charge, alternating between the shared account and
its own account ``{prefix}{thread}``, every command with a fresh key. The key of every
acknowledged command is printed and flushed right after the command returned (so it was
committed): ``g:{user}:{thread}:{i}`` for grants, ``c:{user}:{thread}:{i}`` for charges.
``#ready`` is printed once bootstrapped. Any error is printed as ``#error ...`` and the
process exits with status 1 (so a test can tell a crash it caused from one it did not).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap

_out = threading.Lock()


def emit(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    env = os.environ
    prefix = env.get("CRASH_PREFIX", "w")
    shared = env.get("CRASH_SHARED_USER", "shared")
    threads = int(env.get("CRASH_THREADS", "4"))
    grant = int(env.get("CRASH_GRANT", "1000"))
    charge = int(env.get("CRASH_CHARGE", "700"))
    projections = env.get("CRASH_PROJECTIONS", "0") == "1"
    deadline = time.monotonic() + float(env.get("CRASH_MAX_SECONDS", "60"))

    container = bootstrap(load_settings(env, env_file=None), run_projections=projections)
    failed = threading.Event()

    def work(t: int) -> None:
        own = f"{prefix}{t}"
        i = 0
        try:
            while time.monotonic() < deadline and not failed.is_set():
                user = shared if i % 2 == 0 else own
                key = f"g:{user}:{t}:{i}"
                if not container.ledger.grant(user, grant, key=key).applied:
                    raise AssertionError(f"{key} was a replay")
                emit(key)
                key = f"c:{user}:{t}:{i}"
                if not container.ledger.charge(user, charge, key=key).applied:
                    raise AssertionError(f"{key} was a replay")
                emit(key)
                i += 1
        except BaseException:
            failed.set()
            emit("#error " + traceback.format_exc().replace("\n", " | "))

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    emit("#ready")
    for w in workers:
        w.start()
    while time.monotonic() < deadline and not failed.is_set():
        if projections and container.runner.last_error:
            emit(f"#error projection runner: {container.runner.last_error}")
            failed.set()
            break
        time.sleep(0.05)
    for w in workers:
        w.join()
    container.close()
    return 1 if failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
