"""Deferred ``submit_nowait`` jobs (records nobody waits on) are written together once their burst pauses."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from chargers.writer import GroupCommitWriter


async def test_records_wait_for_a_pause_and_never_hold_back_an_awaited_job():
    # Given a writer that holds records until 0.2 s pass without a new one
    applied: list[list[str]] = []

    def batch_fn(jobs: Sequence[Any]) -> list[Any]:
        applied.append(list(jobs))
        return list(jobs)

    writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_fn, linger=0.2)
    # When two records arrive 50 ms apart and a station's message is awaited meanwhile
    writer.submit_nowait("log-1", defer=True)
    await asyncio.sleep(0.05)
    writer.submit_nowait("log-2", defer=True)
    answer = await asyncio.wait_for(writer.submit("call"), 0.15)
    # Then the awaited message is stored and answered at once, alone
    assert answer == "call"
    assert applied == [["call"]]
    # And the records are stored together, in order, once the burst has paused
    await asyncio.sleep(0.4)
    assert applied == [["call"], ["log-1", "log-2"]]


async def test_a_full_batch_of_records_is_written_without_waiting():
    # Given a writer with batches of at most three jobs and a long pause
    applied: list[list[str]] = []

    def batch_fn(jobs: Sequence[Any]) -> list[Any]:
        applied.append(list(jobs))
        return list(jobs)

    writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_fn, max_batch=3, linger=10.0)
    # When three records arrive back to back
    for name in ("a", "b", "c"):
        writer.submit_nowait(name, defer=True)
    # Then they are written at once, not after the pause
    for _ in range(100):
        if applied:
            break
        await asyncio.sleep(0.01)
    assert applied == [["a", "b", "c"]]
