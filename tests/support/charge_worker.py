"""A charging process for the cross-process concurrency tests.

Run from the repository root as ``python -m tests.support.charge_worker``. Configuration
comes from the environment: the service's ``DB_*`` variables (``Cluster.env(dbname)``) and

- ``CHARGE_USER``: the account every worker charges (shared between processes);
- ``CHARGE_OWN_USER``: optional, a second account only this worker charges;
- ``CHARGE_COUNT``: charges per thread and per account;
- ``CHARGE_AMOUNT``: micro-USD per charge;
- ``CHARGE_PREFIX``: prefix of the idempotency keys (unique per worker);
- ``CHARGE_THREADS``: threads (default 4).

Protocol on stdout: ``#ready`` once bootstrapped; then the worker waits for one line on
stdin (the parent's "go", so that all workers start together); then it prints one line per
acknowledged charge, the idempotency key ``{prefix}:{user}:{thread}:{i}``, flushed at once;
and finally ``#done refused=N conflicts=N retried=N``. Only ``InsufficientCreditsError`` is
an expected refusal: anything else ends the worker with a non-zero exit status.
``ConcurrencyError`` (a 503 "retry") is retried with the same key, as a client would
(at most ``MAX_ATTEMPTS`` times).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

from eventsourcing.persistence import IntegrityError

from domain.errors import ConcurrencyError, InsufficientCreditsError
from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap

_out = threading.Lock()
MAX_ATTEMPTS = 20


def emit(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    env = os.environ
    user = env["CHARGE_USER"]
    own = env.get("CHARGE_OWN_USER", "")
    count = int(env["CHARGE_COUNT"])
    amount = int(env["CHARGE_AMOUNT"])
    prefix = env["CHARGE_PREFIX"]
    threads = int(env.get("CHARGE_THREADS", "4"))
    users = [user, own] if own else [user]

    container = bootstrap(load_settings(env, env_file=None))
    stats = {"refused": 0, "conflicts": 0, "retried": 0}
    stats_lock = threading.Lock()

    def bump(name: str) -> None:
        with stats_lock:
            stats[name] += 1

    # Count optimistic-concurrency conflicts (another process saved the aggregate first).
    app: Any = container.app
    save = app.save

    def counting_save(*args: Any, **kwargs: Any) -> Any:
        try:
            return save(*args, **kwargs)
        except IntegrityError:
            bump("conflicts")
            raise

    app.save = counting_save

    failures: list[str] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(count):
                for u in users:
                    key = f"{prefix}:{u}:{t}:{i}"
                    for attempt in range(MAX_ATTEMPTS):
                        try:
                            outcome = container.ledger.charge(u, amount, key=key)
                        except ConcurrencyError:
                            if attempt == MAX_ATTEMPTS - 1:
                                raise
                            bump("retried")
                            continue
                        except InsufficientCreditsError:
                            bump("refused")
                            break
                        if outcome.applied:
                            emit(key)
                        else:  # a fresh key can never be a replay
                            failures.append(f"{key}: replayed")
                        break
        except BaseException:
            failures.append(traceback.format_exc())

    emit("#ready")
    sys.stdin.readline()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    container.close()
    emit(
        f"#done refused={stats['refused']} conflicts={stats['conflicts']} "
        f"retried={stats['retried']}"
    )
    for failure in failures:
        sys.stderr.write(failure + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
