"""Issue 14 hardening at the socket: message size, message rate and failed handshakes, against a live Daphne
(``vpp.serve``) started with small limits, over real WebSockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from chargers.models import SecurityEvent, StationEvent, StationEventKind
from tests.chargers.conftest import LiveServer, basic_auth, raw_station, start_server, stop_server, wait_until
from tests.chargers.factories import StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

LIMITS = {
    "OCPP_MAX_MESSAGE_BYTES": "4096",
    "OCPP_MAX_MESSAGES_PER_S": "5",
    "OCPP_MESSAGE_BURST": "10",
    "OCPP_AUTH_FAILURES_PER_STATION": "3",
    "OCPP_AUTH_FAILURES_PER_ADDRESS": "1000",
}


@pytest.fixture(scope="module")
def strict_csms(django_db_setup: None, django_db_blocker: object) -> Iterator[LiveServer]:
    server = start_server(LIMITS)
    yield server
    stop_server(server)


async def _connect(server: LiveServer, station_id: str, password: str) -> websockets.asyncio.client.ClientConnection:
    return await websockets.asyncio.client.connect(
        f"{server.ws_url}/{station_id}",
        subprotocols=[Subprotocol("ocpp2.1")],
        additional_headers=basic_auth(station_id, password),
        open_timeout=10,
    )


async def _events(station, kind):
    return [e async for e in StationEvent.objects.filter(station=station, kind=kind).order_by("timestamp")]


async def test_a_message_over_the_limit_closes_the_socket_with_1009_and_others_are_served(strict_csms):
    # Given a connected station
    station, other = await sync_to_async(StationFactory.create_batch)(2)
    async with raw_station(strict_csms, station.station_id) as client:
        # When it sends a frame bigger than OCPP_MAX_MESSAGE_BYTES
        big = json.dumps([2, "big-1", "DataTransfer", {"vendorId": "x", "data": "a" * 10_000}])
        await client.send(big)
        # Then the server closes the connection with 1009 (message too big)
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv(within=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    # And another station is served as before
    async with raw_station(strict_csms, other.station_id) as client:
        assert (await client.rpc([2, "hb-1", "Heartbeat", {}]))[:2] == [3, "hb-1"]


async def test_a_burst_over_the_rate_gets_errors_then_the_station_is_served_again(strict_csms):
    # Given a station allowed 5 messages/s in bursts of 10
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(strict_csms, station.station_id) as client:
        # When it sends 30 Heartbeats at once
        for n in range(30):
            await client.send([2, f"hb-{n}", "Heartbeat", {}])
        answers = [await client.recv() for _ in range(30)]
        # Then every one is answered: the first ones with a result, those over the rate with a GenericError
        results = [a for a in answers if a[0] == 3]
        errors = [a for a in answers if a[0] == 4]
        assert len(results) + len(errors) == 30
        assert 10 <= len(results) < 30
        assert errors
        assert {e[2] for e in errors} == {"GenericError"}
        assert all("rate limit" in e[3] for e in errors)
        # And once it slows down it is served again
        await asyncio.sleep(1.0)
        assert (await client.rpc([2, "hb-after", "Heartbeat", {}]))[:2] == [3, "hb-after"]

    # And the burst is one security event, not one per refused frame
    async def recorded():
        return await _events(station, StationEventKind.RATE_LIMITED)

    await wait_until(recorded)
    assert len(await recorded()) == 1


async def test_repeated_wrong_passwords_lock_the_station_id_out_even_with_the_right_one(strict_csms):
    # Given a station and someone guessing its password
    station, neighbour = await sync_to_async(StationFactory.create_batch)(2)
    for n in range(3):
        with pytest.raises(InvalidStatus) as refused:
            await _connect(strict_csms, station.station_id, f"wrong-password-guess-{n}")
        assert refused.value.response.status_code == 401
    # When the right password comes next, within the window
    with pytest.raises(InvalidStatus) as limited:
        await _connect(strict_csms, station.station_id, "test-station-pass-0123")
    # Then it is refused with 429 without being checked, while another station from the same address connects
    assert limited.value.response.status_code == 429
    ws = await _connect(strict_csms, neighbour.station_id, "test-station-pass-0123")
    await ws.close()

    # And the failures are security events of the station: the first one, and the block
    async def recorded():
        events = await _events(station, StationEventKind.AUTH_FAILED)
        return events if len(events) >= 2 else None

    events = await wait_until(recorded)
    assert "blocked" in events[-1].summary


async def test_a_handshake_for_an_unknown_station_is_a_security_event(strict_csms):
    # When someone connects as a station that does not exist
    with pytest.raises(InvalidStatus) as refused:
        await _connect(strict_csms, "nobody-here", "some-password-guess-1")
    assert refused.value.response.status_code == 401

    # Then the attempt is stored with the id it claimed and where it came from
    async def recorded():
        return await SecurityEvent.objects.filter(station_ident="nobody-here").afirst()

    event = await wait_until(recorded)
    assert event.kind == StationEventKind.AUTH_FAILED
    assert event.address == "127.0.0.1"
