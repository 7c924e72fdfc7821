"""Every queue of the CSMS is bounded: the writer's, a connection's inbox and its queue of CSMS calls."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from chargers import consumers, fanout, ownership
from chargers.consumers import CLOSE_REPLACED, OcppConsumer
from chargers.jobs import IncomingCall
from chargers.writer import GroupCommitWriter
from tests.chargers.conftest import station_socket
from tests.chargers.factories import StationFactory


async def test_awaiting_submitters_wait_for_room_while_records_are_never_held_back() -> None:
    # Given a writer of at most two queued jobs whose first batch is held in the database
    gate = threading.Event()
    batches: list[list[str]] = []

    def batch_fn(jobs: Sequence[str]) -> list[str]:
        if jobs[0] == "first":
            gate.wait(5)
        batches.append(list(jobs))
        return list(jobs)

    writer: GroupCommitWriter[str] = GroupCommitWriter(batch_fn, max_queue=2)
    first = asyncio.ensure_future(writer.submit("first"))
    await asyncio.sleep(0.05)
    # When five more are submitted, and three records besides
    waiting = [asyncio.ensure_future(writer.submit(f"job-{n}")) for n in range(5)]
    await asyncio.sleep(0.05)
    for n in range(3):
        writer.submit_nowait(f"record-{n}")
    # Then only two of the five were let into the queue; the records were queued all the same
    assert writer._queue.qsize() == 5
    queued: list[tuple[str, Any]] = list(writer._queue._queue)  # type: ignore[attr-defined]
    assert [job for job, _ in queued if job.startswith("job-")] == ["job-0", "job-1"]
    # When the database answers again, everything is applied, the waiting jobs in submission order
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *waiting), 5) == ["first"] + [f"job-{n}" for n in range(5)]
    applied = [job for batch in batches for job in batch]
    assert sorted(applied) == sorted(["first", *(f"job-{n}" for n in range(5)), *(f"record-{n}" for n in range(3))])
    assert [j for j in applied if j.startswith("job-")] == [f"job-{n}" for n in range(5)]


@pytest.mark.django_db(transaction=True)
async def test_a_full_inbox_stops_reading_and_loses_nothing(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    # Given a connection whose inbox holds two frames and whose commits are held
    settings.OCPP_INBOX_MAX = 2
    gate = threading.Event()
    real = consumers.batch_apply

    def held(jobs: Sequence[Any]) -> list[Any]:
        if any(isinstance(job, IncomingCall) for job in jobs):
            gate.wait(5)
        return real(jobs)

    monkeypatch.setattr(consumers, "batch_apply", held)
    monkeypatch.setattr("chargers.writer._writers", {})
    station = await sync_to_async(StationFactory.create)()
    socket = station_socket(station.station_id)
    assert (await socket.connect(timeout=5))[0]
    consumer = fanout.LOCAL.get(station.station_id)
    assert isinstance(consumer, OcppConsumer)
    # When the station sends eight heartbeats at once
    for n in range(8):
        await socket.send_to(text_data=json.dumps([2, f"hb-{n}", "Heartbeat", {}]))
    await asyncio.sleep(0.3)
    # Then the inbox is full and the consumer stopped taking frames: the rest still wait in the connection's input
    # (one is being stored, one waits for room; an unbounded inbox would have taken all eight)
    assert consumer.inbox.full()
    assert socket.input_queue.qsize() >= 3
    # and once the commits go through, all eight are answered, in order
    gate.set()
    answers = [json.loads(await socket.receive_from(timeout=10))[1] for _ in range(8)]
    assert answers == [f"hb-{n}" for n in range(8)]
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_full_calls_queue_answers_busy_at_once(settings: Any) -> None:
    # Given a connected station with room for one queued CSMS call, that does not answer
    settings.OCPP_CALLS_MAX = 1
    station = await sync_to_async(StationFactory.create)()
    socket = station_socket(station.station_id)
    assert (await socket.connect(timeout=5))[0]
    consumer = fanout.LOCAL.get(station.station_id)
    assert consumer is not None
    deadline = time.time() + 30
    in_flight = consumer.call_local("Reset", {"type": "Immediate"}, deadline)
    await socket.receive_from(timeout=5)  # the first is sent; the station keeps it unanswered
    queued = consumer.call_local("Reset", {"type": "Immediate"}, deadline)
    # When one more call comes, locally and over the channel layer
    extra = consumer.call_local("Reset", {"type": "Immediate"}, deadline)
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    await layer.send(
        consumer.channel_name,  # type: ignore[attr-defined]
        {"type": "ocpp.call", "action": "Reset", "payload": {}, "reply_to": reply_to, "deadline": deadline},
    )
    # Then both are answered busy at once, and the queued one still waits its turn
    assert (await asyncio.wait_for(extra, 1))["status"] == "busy"
    assert (await asyncio.wait_for(layer.receive(reply_to), 1))["status"] == "busy"
    assert not queued.done()
    assert not in_flight.done()
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_never_told_it_was_replaced_closes_itself(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    # Given the ownership check every 0.2 s, and "replaced" notices that are lost on the way (Redis away)
    settings.OCPP_OWNERSHIP_CHECK_S = 0.2
    layer = get_channel_layer()
    real_send = layer.send

    async def lossy_send(channel: str, message: dict[str, Any]) -> None:
        if message.get("type") == "ocpp.replaced":
            raise ConnectionError("the channel layer is away")
        await real_send(channel, message)

    monkeypatch.setattr(layer, "send", lossy_send)
    station = await sync_to_async(StationFactory.create)()
    old = station_socket(station.station_id)
    assert (await old.connect(timeout=5))[0]
    # When a second connection of the same station claims it
    new = station_socket(station.station_id)
    assert (await new.connect(timeout=5))[0]
    # Then the old socket closes itself as replaced within a few checks, and the new one stays
    closed = await old.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": CLOSE_REPLACED}
    assert await new.receive_nothing(timeout=0.5)
    assert await ownership.holders_check() == 0
    await new.disconnect()
