"""The group-commit writer skips a droppable job whose submitter was cancelled, and only such a job."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from chargers.writer import GroupCommitWriter


@dataclass(frozen=True)
class Claim:
    name: str
    drop_if_abandoned: ClassVar[bool] = True


@dataclass(frozen=True)
class Write:
    name: str


async def test_an_abandoned_claim_is_not_applied_but_an_abandoned_write_is():
    # Given a writer whose first batch is held on its thread while more jobs queue up behind it
    release = threading.Event()
    applied: list[list[str]] = []

    def batch_fn(jobs: Sequence[Any]) -> list[Any]:
        applied.append([job.name for job in jobs])
        if jobs[0].name == "blocker":
            release.wait(5)
        return [job.name for job in jobs]

    writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_fn)
    blocker = asyncio.create_task(writer.submit(Write("blocker")))
    await asyncio.sleep(0.05)
    claim = asyncio.create_task(writer.submit(Claim("claim")))
    write = asyncio.create_task(writer.submit(Write("write")))
    live = asyncio.create_task(writer.submit(Claim("live-claim")))
    abandoned_write = asyncio.create_task(writer.submit(Write("abandoned-write")))
    await asyncio.sleep(0.05)
    # When the submitters of one claim and one write give up (their consumers were cancelled)
    claim.cancel()
    abandoned_write.cancel()
    release.set()
    # Then the live jobs and the abandoned write are applied, the abandoned claim is not
    assert await blocker == "blocker"
    assert await write == "write"
    assert await live == "live-claim"
    await asyncio.sleep(0.05)
    assert applied == [["blocker"], ["write", "live-claim", "abandoned-write"]]
