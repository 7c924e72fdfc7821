"""Connection lifecycle: heartbeat timeout, replacement of a connection by a newer one, two servers on one Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.exceptions import ConnectionClosed

from chargers.models import Station, StationEvent
from chargers.services.heartbeat import station_heartbeat_timeouts_mark
from chargers.tasks import station_heartbeat_sweep
from tests.chargers.conftest import raw_station, start_server, stop_server, wait_until
from tests.chargers.factories import StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def _events(station, kind):
    return StationEvent.objects.filter(station=station, kind=kind).count()


async def test_a_silent_station_is_marked_offline_once_with_a_heartbeat_timeout(live_csms, settings):
    # Given a connected station with a 1 s heartbeat interval and no grace
    settings.OCPP_HEARTBEAT_GRACE = 0
    station = await sync_to_async(StationFactory.create)(heartbeat_interval=1)
    async with raw_station(live_csms, station.station_id) as cs:
        assert (await cs.rpc([2, "hb", "Heartbeat", {}]))[0] == 3
        # When it stays silent past its interval and the sweep runs (twice, as beat might)
        await asyncio.sleep(1.3)
        await sync_to_async(station_heartbeat_sweep)()
        await sync_to_async(station_heartbeat_sweep)()
        # Then it is offline with exactly one HeartbeatTimeout event
        row = await sync_to_async(Station.objects.get)(pk=station.pk)
        assert row.online is False
        assert await sync_to_async(_events)(station, "HeartbeatTimeout") == 1
        # And when it speaks again it is online again
        assert (await cs.rpc([2, "hb2", "Heartbeat", {}]))[0] == 3
        assert (await sync_to_async(Station.objects.get)(pk=station.pk)).online is True


def test_the_sweep_spares_stations_within_interval_and_grace(transactional_db, settings):
    settings.OCPP_HEARTBEAT_GRACE = 30
    now = datetime.now(UTC)
    fresh = StationFactory.create(online=True, heartbeat_interval=60, last_seen=now - timedelta(seconds=80))
    stale = StationFactory.create(online=True, heartbeat_interval=60, last_seen=now - timedelta(seconds=95))
    assert station_heartbeat_timeouts_mark(now=now) == 1
    assert Station.objects.get(pk=fresh.pk).online is True
    assert Station.objects.get(pk=stale.pk).online is False


async def test_a_second_connection_replaces_the_first_cleanly(live_csms, call_station):
    # Given a station connected once
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as old:
        assert (await old.rpc([2, "a", "Heartbeat", {}]))[0] == 3
        # When it connects again under the same id (e.g. after a half-open TCP connection)
        async with raw_station(live_csms, station.station_id) as new:
            # Then the old socket is closed by the server
            with pytest.raises(ConnectionClosed) as closed:
                await old.recv(within=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4000
            # And the station stays online and is served on the new connection, commands included
            assert (await new.rpc([2, "b", "Heartbeat", {}]))[0] == 3
            assert (await sync_to_async(Station.objects.get)(pk=station.pk)).online is True
            task = asyncio.create_task(call_station(station.station_id, "Reset", {"type": "OnIdle"}))
            frame = await new.recv()
            await new.send([3, frame[1], {"status": "Scheduled"}])
            assert await task == {"status": "Scheduled"}
        # And only the close of the current connection takes it offline

    async def offline():
        return not (await sync_to_async(Station.objects.get)(pk=station.pk)).online

    await wait_until(offline)
    assert await sync_to_async(_events)(station, "Replaced") == 1
    assert await sync_to_async(_events)(station, "Disconnected") == 1


@pytest.mark.skipif(not settings.REDIS_URL, reason="two server processes share stations only through Redis")
async def test_a_station_on_one_server_is_commanded_through_another(live_csms, transactional_db):
    # Given a second server process on the same Redis and database, and a station connected to the first
    station = await sync_to_async(StationFactory.create)()
    other = await asyncio.to_thread(start_server)
    try:
        async with raw_station(live_csms, station.station_id) as cs:
            assert (await cs.rpc([2, "hb", "Heartbeat", {}]))[0] == 3
            # When an operator asks the OTHER server's REST endpoint to reset it
            from django.contrib.auth import get_user_model

            from tests.fleet.factories import api_key_for

            user = await sync_to_async(get_user_model().objects.create_user)("ops2", is_staff=True)
            token = await sync_to_async(api_key_for)(user, "command")
            task = asyncio.create_task(asyncio.to_thread(_post_call, other.http_url, token, station.station_id))
            # Then the call crosses Redis to the process holding the socket, and the answer comes back
            frame = await cs.recv()
            assert frame[2:] == ["Reset", {"type": "Immediate"}]
            await cs.send([3, frame[1], {"status": "Accepted"}])
            assert await task == {"status": "Accepted"}
    finally:
        await asyncio.to_thread(stop_server, other)


def _post_call(base: str, token: str, station_id: str) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{base}/api/stations/{station_id}/call",
        data=json.dumps({"action": "Reset", "payload": {"type": "Immediate"}, "timeout": 10}).encode(),
        headers={"Authorization": f"Api-Key {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())["payload"]
