"""Password rotation end to end: SetVariables SecurityCtrlr.BasicAuthPassword through ``station_call`` to a live
server and a station on a real socket; both passwords valid until the station connects with the new one."""

from __future__ import annotations

import asyncio

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from chargers.models import MessageLog, Station, StationCommand, StationEvent
from chargers.services.password_rotation import rotation_payload
from tests.chargers.conftest import basic_auth, raw_station, wait_until
from tests.chargers.factories import STATION_PASSWORD, StationFactory

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

NEW_PASSWORD = "rotated-Pass-word-0123456789"


async def _connect(server, station_id: str, password: str):
    return await websockets.asyncio.client.connect(
        f"{server.ws_url}/{station_id}",
        subprotocols=[Subprotocol("ocpp2.1")],
        additional_headers=basic_auth(station_id, password),
        open_timeout=10,
    )


async def _rotate(live_csms, call_station, station_id: str, status: str) -> dict:
    """The station (a raw socket) answers the rotation's SetVariables with ``status``; returns the CALLRESULT."""
    async with raw_station(live_csms, station_id) as station:
        call = asyncio.ensure_future(call_station(station_id, "SetVariables", rotation_payload(NEW_PASSWORD)))
        frame = await station.recv()
        assert frame[2] == "SetVariables"
        assert frame[3]["setVariableData"][0]["attributeValue"] == NEW_PASSWORD  # the station does get it
        result = {
            "attributeStatus": status,
            "component": {"name": "SecurityCtrlr"},
            "variable": {"name": "BasicAuthPassword"},
        }
        await station.send([3, frame[1], {"setVariableResult": [result]}])
        return await call


async def test_an_accepted_password_is_valid_beside_the_old_until_the_station_uses_it(live_csms, call_station):
    # Given a connected station
    station = await sync_to_async(StationFactory.create)()
    # When the CSMS sets a new BasicAuthPassword and the station accepts it
    answer = await _rotate(live_csms, call_station, station.station_id, "Accepted")
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    # Then the old password still lets it in
    ws = await _connect(live_csms, station.station_id, STATION_PASSWORD)
    await ws.close()
    # And when it reconnects with the new one, that is accepted and the old one is dropped
    ws = await _connect(live_csms, station.station_id, NEW_PASSWORD)
    await ws.close()
    with pytest.raises(InvalidStatus) as refused:
        await _connect(live_csms, station.station_id, STATION_PASSWORD)
    assert refused.value.response.status_code == 401
    row = await Station.objects.aget(pk=station.pk)
    assert row.check_password(NEW_PASSWORD)
    assert row.password_pending_hash == ""
    summaries = [
        s
        async for s in StationEvent.objects.filter(station=station, kind="PasswordRotated").values_list(
            "summary", flat=True
        )
    ]
    assert any("no longer valid" in s for s in summaries)


async def test_the_new_password_is_stored_nowhere_in_clear(live_csms, call_station):
    # Given a rotation the station accepted
    station = await sync_to_async(StationFactory.create)()
    await _rotate(live_csms, call_station, station.station_id, "Accepted")

    # Then neither the message log nor the audit trail holds the password (the message log row is masked)
    async def logged():
        return await MessageLog.objects.filter(station=station, action="SetVariables").afirst()

    row = await wait_until(logged)
    assert NEW_PASSWORD not in str(row.payload)
    assert row.payload["setVariableData"][0]["attributeValue"] == "********"
    audit = [
        str(p)
        async for p in StationCommand.objects.filter(station_ident=station.station_id).values_list("payload", flat=True)
    ]
    assert audit
    assert not any(NEW_PASSWORD in p for p in audit)
    hashes = await Station.objects.filter(pk=station.pk).values_list("password_hash", "password_pending_hash").aget()
    assert not any(NEW_PASSWORD in h for h in hashes)


async def test_a_refused_password_is_never_valid(live_csms, call_station):
    # Given a station that rejects the new password
    station = await sync_to_async(StationFactory.create)()
    await _rotate(live_csms, call_station, station.station_id, "Rejected")
    # Then only the old password lets it in
    with pytest.raises(InvalidStatus):
        await _connect(live_csms, station.station_id, NEW_PASSWORD)
    ws = await _connect(live_csms, station.station_id, STATION_PASSWORD)
    await ws.close()
