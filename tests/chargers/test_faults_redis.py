"""Redis goes away and comes back (killed and restarted empty): the CSMS carries on by itself.

Each test runs its own ``redis-server`` on a free port (tests.faults.RedisProcess), never the shared one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
from asgiref.sync import sync_to_async
from celery import Celery
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from chargers import fanout
from chargers.consumers import OcppConsumer
from chargers.models import MeterValue
from fleet import jobs
from fleet import telemetry as fleet_telemetry
from tests.chargers.conftest import station_socket
from tests.chargers.factories import StationFactory
from tests.faults import PausableTcpProxy, RedisProcess

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not RedisProcess.available(), reason="redis-server is not installed"),
]


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


@pytest.fixture
def redis_layer(own_redis: RedisProcess, settings: Any) -> RedisProcess:
    """The channel layer on our own Redis (Channels rebuilds its layers when CHANNEL_LAYERS changes)."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": own_redis.url, "socket_timeout": 10}]},
        }
    }
    return own_redis


async def _send_when_up(layer: Any, channel: str, message: dict[str, Any], within: float = 10.0) -> None:
    """The caller's side retries its send while Redis is still coming up; the consumer is what is under test."""
    deadline = time.monotonic() + within
    while True:
        try:
            await layer.send(channel, message)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _command(layer: Any, socket: WebsocketCommunicator, channel: str) -> dict[str, Any]:
    """Send a Reset over the channel layer; the station answers it; returns the reply the caller got."""
    reply_to = await layer.new_channel()
    call = {"type": "ocpp.call", "action": "Reset", "payload": {"type": "Immediate"}, "reply_to": reply_to}
    await _send_when_up(layer, channel, {**call, "deadline": time.time() + 20})
    frame = json.loads(await socket.receive_from(timeout=10))
    assert frame[2] == "Reset"
    await socket.send_to(text_data=json.dumps([3, frame[1], {"status": "Accepted"}]))
    return dict(await asyncio.wait_for(layer.receive(reply_to), 10))


async def test_a_station_is_commandable_again_within_seconds_after_redis_restarts(
    redis_layer: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connected station commandable over Redis; its consumer's pump is the only receiver in this process
    # (the fan-out node would otherwise take the failing blocking pop in its place)
    monkeypatch.setattr(fanout.NodeListener, "ensure_started", classmethod(lambda cls: None))
    station = await sync_to_async(StationFactory.create)()
    socket = station_socket(station.station_id)
    assert (await socket.connect(timeout=5))[0]
    consumer = fanout.LOCAL.get(station.station_id)
    assert isinstance(consumer, OcppConsumer)
    layer = get_channel_layer()
    assert (await _command(layer, socket, consumer.channel_name))["status"] == "result"
    # When Redis dies under the pump's blocking receive and comes back empty
    redis_layer.stop()
    await asyncio.sleep(1.0)
    redis_layer.start()
    # Then the station takes and answers a command again, with no reconnect
    reply = await asyncio.wait_for(_command(layer, socket, consumer.channel_name), 15)
    assert reply["status"] == "result"
    assert reply["payload"] == {"status": "Accepted"}
    await socket.disconnect()


async def test_the_fanout_node_is_back_in_its_group_within_seconds_after_redis_restarts(
    redis_layer: RedisProcess,
) -> None:
    # Given this process's fan-out node, joined to the nodes' group on our Redis
    layer = get_channel_layer()
    client = redis.asyncio.Redis.from_url(redis_layer.url)
    key = layer._group_key(fanout.NODES_GROUP)
    fanout.NodeListener.ensure_started()
    try:
        await _until(lambda: client.zcard(key), within=5)
        # When Redis restarts without its data (the membership is gone)
        redis_layer.stop()
        await asyncio.sleep(0.5)
        redis_layer.start()
        assert await _retrying(lambda: client.zcard(key)) == 0
        # Then the node is a member again within seconds
        await _until(lambda: client.zcard(key), within=fanout.GROUP_REFRESH_S + 8)
    finally:
        if fanout.NodeListener._task is not None:
            fanout.NodeListener._task.cancel()
        await client.aclose()


def test_the_telemetry_publisher_does_not_wait_for_a_dead_broker_and_delivers_once_it_is_back(
    own_redis: RedisProcess,
) -> None:
    # Given a publisher whose broker is our Redis, killed
    app = Celery(broker=own_redis.url, set_as_current=False)
    app.conf.broker_connection_timeout = 1
    app.conf.broker_transport_options = {"socket_connect_timeout": 1, "socket_timeout": 2}
    publisher = jobs.BackgroundPublisher(app=app, maxsize=10)
    own_redis.stop()
    # When messages are put while it is away
    started = time.monotonic()
    for n in range(3):
        publisher.put("fleet.ingest_telemetry", ([{"n": n}],))
    # Then putting does not wait on the broker, and nothing is lost while it is away
    assert time.monotonic() - started < 0.5  # generous: a put is a lock and an append
    time.sleep(1.0)
    assert publisher.pending() == 3
    # and once Redis is back all three reach its queue, in order
    own_redis.start()
    deadline = time.monotonic() + 15
    while publisher.pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert publisher.pending() == 0
    queued = _sync_redis(own_redis).lrange("celery", 0, -1)
    bodies = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0][0]["n"] for m in reversed(queued)]
    assert bodies == [0, 1, 2]
    assert publisher.dropped == 0
    publisher.stop()


def test_a_full_publisher_drops_the_oldest_and_counts_it() -> None:
    # Given a publisher of two messages whose broker never answers (a port nobody listens on)
    app = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_connection_timeout = 1
    publisher = jobs.BackgroundPublisher(app=app, maxsize=2)
    # When five are put
    for n in range(5):
        publisher.put("fleet.ingest_telemetry", ([{"n": n}],))
    # Then at most two wait besides the one being published, and each one dropped is counted
    time.sleep(0.3)
    assert publisher.pending() <= 3
    assert publisher.dropped + publisher.pending() == 5
    publisher.stop()


async def test_meter_values_are_stored_and_answered_while_the_broker_answers_nothing(
    own_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the fleet's telemetry hand-off publishing (not eager) to a broker behind a paused proxy
    with PausableTcpProxy("127.0.0.1", own_redis.port) as proxy:
        app = Celery(broker=f"redis://127.0.0.1:{proxy.port}/0", set_as_current=False)
        app.conf.broker_transport_options = {"socket_connect_timeout": 30, "socket_timeout": 30}
        publisher = jobs.BackgroundPublisher(app=app)
        monkeypatch.setattr(jobs, "PUBLISHER", publisher)
        monkeypatch.setitem(jobs.current_app.conf, "task_always_eager", False)
        # The fleet's ingest window hands on to the publisher after 0.1 s here (FLEET_INGEST_WINDOW_S)
        window = fleet_telemetry.ReadingCoalescer(window_s=0.1, publish=fleet_telemetry._publish_ingest)
        monkeypatch.setattr(fleet_telemetry, "COALESCER", window)
        proxy.pause()
        station = await sync_to_async(StationFactory.create)()
        socket = station_socket(station.station_id)
        assert (await socket.connect(timeout=5))[0]
        # When the station sends state-of-charge readings one after another
        for n in range(3):
            reading = {"value": 50 + n, "measurand": "SoC"}
            payload = {"evseId": 1, "meterValue": [{"timestamp": f"2026-01-15T10:00:0{n}Z", "sampledValue": [reading]}]}
            await socket.send_to(text_data=json.dumps([2, f"mv-{n}", "MeterValues", payload]))
            # Then each is stored and acknowledged while the broker is unreachable
            assert json.loads(await socket.receive_from(timeout=10)) == [3, f"mv-{n}", {}]
            await asyncio.sleep(0.3)  # past OCPP_TELEMETRY_INTERVAL: the hand-off ran for this batch
        assert await MeterValue.objects.filter(station_id=station.pk).acount() == 3
        assert publisher.pending() >= 1  # the hand-off is still waiting on the broker
        await socket.disconnect()
        publisher.stop()
        proxy.cut()


def _sync_redis(server: RedisProcess) -> Any:
    import redis as redis_sync

    return redis_sync.Redis.from_url(server.url)


async def _retrying(read: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await read()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _until(read: Any, *, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            value = await read()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.1)
