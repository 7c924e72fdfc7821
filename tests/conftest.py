"""Project-wide fixtures. App-specific fixtures live in tests/<app>/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


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
