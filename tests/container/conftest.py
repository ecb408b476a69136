"""The container tests run only when asked for with ``-m container`` (``make container-test``).

They build images and start a whole compose stack (minutes, root, podman): a plain
``pytest -q`` deselects them here instead of spending that time.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "container" in (config.option.markexpr or ""):
        return
    skipped = [item for item in items if item.get_closest_marker("container")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if not item.get_closest_marker("container")]
