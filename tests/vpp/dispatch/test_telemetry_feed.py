"""The dispatcher's telemetry feed survives the channel layer: a real redis-server, started here, restarted mid-test.

A Redis without persistence forgets every group membership when it restarts; the dispatcher must join again by
itself and hear the stations' state of charge within seconds, without a restart of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from channels.layers import get_channel_layer

from chargers.telemetry import TELEMETRY_GROUP
from tests.vpp.stand_ins import fleet_of
from vpp.dispatch.dispatcher import Dispatcher, DispatchState

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throw-away redis-server on ``port``, without persistence (a restart forgets everything)."""
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            assert process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _heard(dispatcher: Dispatcher, pct: float, within_s: float = 20.0) -> bool:
    """Publish a SoC reading for disp-1 every 0.3 s until the dispatcher has it (or ``within_s`` passed)."""
    layer = get_channel_layer()
    update = {"kind": "meter", "station_id": "disp-1", "values": {"SoC": pct}}
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the sender's own connection may need a retry after a restart
            await layer.group_send(TELEMETRY_GROUP, {"type": "telemetry.update", "updates": [update]})
        await asyncio.sleep(0.3)
        if dispatcher.soc_pct_heard("disp-1") == pct:
            return True
    return False


async def test_the_dispatcher_hears_telemetry_again_after_redis_restarts(settings, caplog):
    # Given a dispatcher following telemetry on a Redis channel layer (our own redis-server)
    port = _free_port()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": f"redis://127.0.0.1:{port}/0"}], "prefix": "feedtest", "expiry": 60},
        }
    }
    fleet, routes = fleet_of(1)
    dispatcher = Dispatcher(
        product_id=1,
        portfolio="feed",
        loader=lambda **_: DispatchState(fleet, routes, 10_000, time.time() + 60, time.time()),
        recorder=None,
        refresh_s=3600,
        rejoin_s=0.5,
    )
    with _redis(port):
        dispatcher.start()
        await dispatcher.ready()
        assert await _heard(dispatcher, 41.0)
    try:
        # When Redis restarts (every group membership gone) after a moment down
        await asyncio.sleep(1.5)
        with _redis(port):
            # Then the dispatcher hears the stations again within seconds
            assert await _heard(dispatcher, 42.0)
            # And the outage was logged once, not once per retry
            assert caplog.text.count("telemetry feed lost") <= 1
            await dispatcher.stop()
            await get_channel_layer().close_pools()
    finally:
        await dispatcher.stop()
