"""A replica that runs only the marketplace jobs (metering), for the election tests.

Run from the repository root as ``python -m tests.support.metering_replica`` with the service's
settings in the environment (``DB_*``, ``METERING_INTERVAL_SECONDS``, ``INSTANCE_POLL_SECONDS``).
It bootstraps, starts its projection runner, prints ``#ready`` and runs the elected jobs until
it is killed, as a server process does.
"""

from __future__ import annotations

import asyncio

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap


def main() -> None:
    container = bootstrap(load_settings(env_file=None), run_projections=True)
    print("#ready", flush=True)
    try:
        asyncio.run(container.jobs().run_forever())
    finally:
        container.close()


if __name__ == "__main__":
    main()
