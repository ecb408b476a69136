"""A JWT request's authentication, remembered against verified each time (ADR 0034).

``python -m tests.bench.bench_token_cache``: one process, SQLite in WAL mode with the file
revocation signal (the embedded set-up), one user logged in. Alternating rounds time
``AuthService.authenticate`` for the same Bearer token: *remembered* (the steady state: a
SHA-256, a signal ``stat``, a dict look-up) and *verified* (what every request did before:
JWT decode, the session row, the user row; the remembered tokens are forgotten before each
call). Prints the median microseconds per call of each side and their ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap

CALLS = 2_000
ROUNDS = 7


def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        settings = load_settings({"DATA_DIR": data, "JWT_SECRET": "b" * 48}, env_file=None)
        c = bootstrap(settings)
        try:
            c.users.create("bench@example.com", "correct-horse-battery", "Bench")
            token = c.auth.login("bench@example.com", "correct-horse-battery").access_token
            header = f"Bearer {token}"
            auth = c.auth
            sides: dict[str, list[float]] = {"remembered": [], "verified": []}
            for _ in range(ROUNDS):
                for side, samples in sides.items():
                    forget = side == "verified"
                    auth.authenticate(None, header)
                    start = time.perf_counter()
                    for _ in range(CALLS):
                        if forget:
                            auth._tokens.clear()
                        auth.authenticate(None, header)
                    samples.append((time.perf_counter() - start) / CALLS * 1e6)
        finally:
            c.close()
    medians = {side: statistics.median(samples) for side, samples in sides.items()}
    for side, samples in sides.items():
        rounds = " ".join(f"{s:.1f}" for s in samples)
        print(f"{side:>10}: median {medians[side]:.1f} us per call (rounds: {rounds})")
    print(f"remembered/verified: {medians['remembered'] / medians['verified']:.3f}")


if __name__ == "__main__":
    main()
