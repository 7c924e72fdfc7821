"""Work a batch registers with ``after_batch`` runs after its submitters are answered, only if it committed, and
coalesced: at most once per ``after_interval``, with the items of every batch committed meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from chargers.writer import GroupCommitWriter, after_batch


async def _until(condition: Any) -> None:
    for _ in range(200):  # up to 2 s
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_after_batch_work_does_not_hold_back_the_answers():
    # Given a batch whose after-batch work only finishes once the submitter has seen its answer
    answered = threading.Event()
    saw_answer_first: list[bool] = []

    def batch_fn(jobs: Sequence[Any]) -> list[Any]:
        after_batch(lambda items: saw_answer_first.append(answered.wait(2)), list(jobs))
        return list(jobs)

    writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_fn)
    # When a job is submitted
    result = await asyncio.wait_for(writer.submit("job"), 1)
    answered.set()
    # Then the answer came before the after-batch work ran to its end, and that work still ran
    assert result == "job"
    await _until(lambda: saw_answer_first)
    assert saw_answer_first == [True]


async def test_a_failed_batch_runs_only_the_after_work_of_jobs_that_committed():
    # Given a batch function that registers after-batch work per job and fails whenever the bad job is in the batch
    ran: list[str] = []
    gate = threading.Event()

    def batch_fn(jobs: Sequence[Any]) -> list[Any]:
        if jobs[0] == "gate":
            gate.wait(5)
        for job in jobs:
            after_batch(ran.extend, [job])
        if "bad" in jobs:
            raise ValueError("bad job")
        return list(jobs)

    writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_fn)
    first = asyncio.create_task(writer.submit("gate"))
    await asyncio.sleep(0.05)
    good = asyncio.create_task(writer.submit("good"))
    bad = asyncio.create_task(writer.submit("bad"))
    await asyncio.sleep(0.05)
    # When "good" and "bad" land in one batch, which fails and is retried job by job
    gate.set()
    assert await first == "gate"
    assert await good == "good"
    with pytest.raises(ValueError, match="bad job"):
        await bad
    await asyncio.sleep(0.1)
    # Then the after-work of the jobs that committed ran once each, and none of the failed attempts'
    assert sorted(ran) == ["gate", "good"]


async def test_batches_committed_within_the_interval_are_handed_on_in_one_call():
    # Given a writer that releases after-batch work at most every 0.3 s
    calls: list[list[str]] = []

    def batch_fn(jobs: Sequence[Any]) -> list[Any]:
        after_batch(calls.append, list(jobs))
        return list(jobs)

    writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_fn, after_interval=0.3)
    # When one batch commits, then two more shortly after it, each on its own
    assert await writer.submit("a") == "a"
    await _until(lambda: calls)
    assert await writer.submit("b") == "b"
    assert await writer.submit("c") == "c"
    # Then the first is handed on at once and the next two together, in commit order, once the interval is over
    await asyncio.sleep(0.1)
    assert calls == [["a"]]
    await _until(lambda: len(calls) > 1)
    assert calls == [["a"], ["b", "c"]]
