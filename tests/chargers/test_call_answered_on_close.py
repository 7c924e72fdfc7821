"""A station may answer a CSMS call and close its socket in the same read: the answer still reaches the caller."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async

from chargers import fanout
from tests.chargers.conftest import station_socket
from tests.chargers.factories import StationFactory


@pytest.mark.django_db(transaction=True)
async def test_an_answer_that_arrives_with_the_close_reaches_the_caller() -> None:
    # Given a connected station asked to reset
    station = await sync_to_async(StationFactory.create)()
    socket = station_socket(station.station_id)
    assert (await socket.connect(timeout=5))[0]
    consumer = fanout.LOCAL.get(station.station_id)
    assert consumer is not None
    reply = consumer.call_local("Reset", {"type": "Immediate"}, time.time() + 30)
    frame = json.loads(await socket.receive_from(timeout=5))
    # When its answer and its close come together (one read: nothing runs between the two events)
    await socket.send_to(text_data=json.dumps([3, frame[1], {"status": "Accepted"}]))
    await socket.send_input({"type": "websocket.disconnect", "code": 1000})
    # Then the caller gets the station's answer, not "offline"
    answer = await asyncio.wait_for(reply, 5)
    assert answer["status"] == "result", answer
    assert answer["payload"] == {"status": "Accepted"}
    await socket.wait(timeout=5)
