"""The dispatcher's telemetry feed survives the channel layer: a real redis-server, started here, restarted mid-test.

A Redis without persistence forgets every group membership when it restarts; the dispatcher must join again by
itself and hear the stations' state of charge within seconds, without a restart of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from channels.layers import get_channel_layer

from chargers.telemetry import TELEMETRY_GROUP
from tests.faults import RedisProcess
from tests.vpp.stand_ins import fleet_of
from vpp.dispatch.dispatcher import Dispatcher, DispatchState

pytestmark = pytest.mark.skipif(not RedisProcess.available(), reason="needs redis-server on PATH")


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
    redis = RedisProcess()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": redis.url}], "prefix": "feedtest", "expiry": 60},
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
    with redis:
        dispatcher.start()
        await dispatcher.ready()
        assert await _heard(dispatcher, 41.0)
    try:
        # When Redis restarts (every group membership gone) after a moment down
        await asyncio.sleep(1.5)
        with redis:
            # Then the dispatcher hears the stations again within seconds
            assert await _heard(dispatcher, 42.0)
            # And the outage was logged once, not once per retry
            assert caplog.text.count("telemetry feed lost") <= 1
            await dispatcher.stop()
            await get_channel_layer().close_pools()
    finally:
        await dispatcher.stop()
