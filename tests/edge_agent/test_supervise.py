"""A component of the agent that fails (the ISO 15118 stack without Java, say) is logged and retried, never silent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge_agent.app import supervise


async def test_a_failing_component_is_logged_and_retried_until_it_runs(caplog: pytest.LogCaptureFixture) -> None:
    # Given a component that fails twice (no Java yet) and then runs until the agent stops
    stop = asyncio.Event()
    attempts: list[int] = []

    async def start() -> None:
        attempts.append(len(attempts))
        if len(attempts) <= 2:
            raise RuntimeError("java: not found")
        await stop.wait()

    # When the agent supervises it (short delays for the test)
    caplog.set_level(logging.WARNING, logger="edge_agent")
    task = asyncio.ensure_future(supervise("ISO 15118 SECC", start, stop, station_id="cs-1", first_s=0.01, max_s=0.02))
    for _ in range(200):
        if len(attempts) == 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    # Then each failure was logged with its reason, and the third attempt ran until the stop
    assert len(attempts) == 3
    failures = [r for r in caplog.records if "ISO 15118 SECC failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info and "java: not found" in str(r.exc_info[1]) for r in failures)
