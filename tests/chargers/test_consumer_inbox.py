"""A station's answer to a CSMS call is not held behind the storage of the station's own messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chargers import consumers, fanout
from chargers.models import MeterValue
from tests.chargers.conftest import station_socket
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db(transaction=True)

SLOW_COMMIT_S = 0.6
METER_VALUES = {
    "evseId": 1,
    "meterValue": [{"timestamp": "2026-01-15T10:00:00Z", "sampledValue": [{"value": 7000.0}]}],
}


@pytest.fixture
def slow_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every group commit takes SLOW_COMMIT_S, as on a database under heavy load."""
    real = consumers.batch_apply

    def slow(jobs: Sequence[Any]) -> list[Any]:
        time.sleep(SLOW_COMMIT_S)
        return real(jobs)

    monkeypatch.setattr(consumers, "batch_apply", slow)
    # The per-loop writer binds batch_apply when it is created: start from none so this test's writer is slow.
    monkeypatch.setattr("chargers.writer._writers", {})


async def test_a_call_result_is_routed_while_the_stations_own_messages_commit(slow_commits: None) -> None:
    # given a connected station whose messages take SLOW_COMMIT_S to commit
    station = await sync_to_async(StationFactory.create)()
    socket = station_socket(station.station_id)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    # and a CSMS call in flight to it
    consumer = fanout.LOCAL.get(station.station_id)
    assert consumer is not None
    answer = consumer.call_local("Reset", {"type": "Immediate"}, time.time() + 10)
    call = json.loads(await socket.receive_from(timeout=5))
    # when the station sends meter values and, right behind them, its answer to our call
    started = time.monotonic()
    await socket.send_to(text_data=json.dumps([2, "mv-1", "MeterValues", METER_VALUES]))
    await socket.send_to(text_data=json.dumps([3, call[1], {"status": "Accepted"}]))
    # then the caller has the answer before the meter values are even committed
    reply = await asyncio.wait_for(answer, timeout=5)
    assert reply["payload"] == {"status": "Accepted"}
    assert time.monotonic() - started < SLOW_COMMIT_S
    # and the meter values are still stored and acknowledged, in order
    assert json.loads(await socket.receive_from(timeout=5)) == [3, "mv-1", {}]
    assert await MeterValue.objects.filter(station_id=station.pk).acount() == 1
    await socket.disconnect()
