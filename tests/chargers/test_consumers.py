"""The OCPP-J endpoint over real WebSockets against a live Daphne process."""

from __future__ import annotations

import base64
import json

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from ocpp.v21 import call as call21
from ocpp.v201 import call as call201
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from chargers.models import BootStatus, MessageLog, Station, StationEvent
from tests.chargers.conftest import basic_auth, station_client, wait_until
from tests.chargers.factories import StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def _boot(version: str):
    module = call21 if version == "2.1" else call201
    return module.BootNotification(
        charging_station={"model": "VX-1", "vendor_name": "Acme", "firmware_version": "1.2.3"}, reason="PowerUp"
    )


@pytest.mark.parametrize("version", ["2.1", "2.0.1"])
async def test_it_accepts_a_boot_and_heartbeats_and_records_the_station(live_csms, version):
    # Given a provisioned station
    station = await sync_to_async(StationFactory.create)(heartbeat_interval=42)
    # When it connects, boots and heartbeats
    async with station_client(live_csms, station.station_id, version=version) as client:
        assert client.ws.subprotocol == f"ocpp{version}"
        boot = await client.cp.call(_boot(version))
        heartbeat = await client.cp.call((call21 if version == "2.1" else call201).Heartbeat())
        # Then it is accepted with its interval and the server's time, and is online with what it said
        assert (boot.status, boot.interval) == ("Accepted", 42)
        assert heartbeat.current_time
        row = await sync_to_async(Station.objects.get)(pk=station.pk)
        assert (row.online, row.vendor, row.model, row.firmware_version, row.ocpp_version) == (
            True,
            "Acme",
            "VX-1",
            "1.2.3",
            version,
        )
        assert row.last_seen is not None
        actions = [
            row
            async for row in MessageLog.objects.filter(station=station)
            .order_by("created_at")
            .values_list("action", flat=True)
        ]
        assert actions == ["BootNotification", "Heartbeat"]

    # And when it disconnects it goes offline with a Disconnected event
    async def offline():
        return not (await sync_to_async(Station.objects.get)(pk=station.pk)).online

    await wait_until(offline)
    kinds = {row async for row in StationEvent.objects.filter(station=station).values_list("kind", flat=True)}
    assert {"Connected", "Booted", "Disconnected"} <= kinds


@pytest.mark.parametrize("boot_status", [BootStatus.PENDING, BootStatus.REJECTED])
async def test_it_answers_boot_with_the_configured_registration_status(live_csms, boot_status):
    station = await sync_to_async(StationFactory.create)(boot_status=boot_status)
    async with station_client(live_csms, station.station_id) as client:
        boot = await client.cp.call(_boot("2.1"))
        assert boot.status == boot_status


async def test_a_rejected_station_gets_security_error_for_anything_but_boot(live_csms):
    station = await sync_to_async(StationFactory.create)(boot_status=BootStatus.REJECTED)
    async with station_client(live_csms, station.station_id) as client:
        await client.ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
        assert json.loads(await client.ws.recv())[:3] == [4, "hb-1", "SecurityError"]


@pytest.mark.parametrize(
    ("who", "password"),
    [("known", "wrong-password-000000"), ("unknown", "test-station-pass-0123"), ("known", None)],
)
async def test_it_refuses_unknown_stations_and_wrong_passwords_with_401(live_csms, who, password):
    # Given a known station, or an id nobody provisioned
    station_id = (await sync_to_async(StationFactory.create)()).station_id if who == "known" else "nobody-here"
    headers = basic_auth(station_id, password) if password else {}
    # When it opens the WebSocket with bad or missing credentials
    with pytest.raises(InvalidStatus) as refused:
        await websockets.asyncio.client.connect(
            f"{live_csms.ws_url}/{station_id}", subprotocols=[Subprotocol("ocpp2.1")], additional_headers=headers
        )
    # Then the handshake is refused with HTTP 401 and a Basic challenge, before any OCPP message
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic")


async def test_it_refuses_basic_auth_naming_another_station(live_csms):
    station, other = await sync_to_async(StationFactory.create_batch)(2)
    token = base64.b64encode(f"{other.station_id}:test-station-pass-0123".encode()).decode()
    with pytest.raises(InvalidStatus) as refused:
        await websockets.asyncio.client.connect(
            f"{live_csms.ws_url}/{station.station_id}",
            subprotocols=[Subprotocol("ocpp2.1")],
            additional_headers={"Authorization": f"Basic {token}"},
        )
    assert refused.value.response.status_code == 401


async def test_it_closes_a_client_offering_no_ocpp2_subprotocol(live_csms):
    # Given a known station whose client only speaks OCPP 1.6
    station = await sync_to_async(StationFactory.create)()
    ws = await websockets.asyncio.client.connect(
        f"{live_csms.ws_url}/{station.station_id}",
        subprotocols=[Subprotocol("ocpp1.6")],
        additional_headers=basic_auth(station.station_id),
    )
    # Then the handshake completes with no subprotocol and the server closes at once, before any OCPP message
    assert ws.subprotocol is None
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4002
