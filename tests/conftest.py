"""Project-wide fixtures. App-specific fixtures live in tests/<app>/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The browser tests run last. pytest-playwright starts Playwright's sync API once per session, and while it is
    started an event loop runs on the main thread: every asyncio test after it would fail with "Runner.run() cannot be
    called from a running event loop". Order within each group is kept."""
    browser = [item for item in items if item.get_closest_marker("e2e") is not None]
    if browser:
        items[:] = [item for item in items if item.get_closest_marker("e2e") is None] + browser


@pytest.fixture(autouse=True)
def _failure_counters_reset() -> Iterator[None]:
    """The in-process failure counters (failed OCPP handshakes, unknown API keys) are per process: without a reset,
    one test's refusals from 127.0.0.1 would block the next test's client."""
    from chargers.handshake import FAILURES
    from fleet.keys import UNKNOWN_KEYS

    FAILURES.clear()
    UNKNOWN_KEYS.clear()
    yield
    FAILURES.clear()
    UNKNOWN_KEYS.clear()
