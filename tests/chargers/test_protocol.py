"""OCPP-J framing, validation errors, conformance of every station-initiated action, 2.1 SEND/CALLRESULTERROR."""

from __future__ import annotations

import asyncio

import ocpp.messages
import pytest
from asgiref.sync import sync_to_async

from chargers import ocpp_j
from chargers.models import (
    DerAlarm,
    DeviceVariable,
    EvChargingNeeds,
    MessageLog,
    MeterValue,
    StationEvent,
    Transaction,
)
from tests.chargers.conftest import raw_station
from tests.chargers.factories import StationFactory
from tests.chargers.payloads import NOW, SEND_21, station_payloads

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

BAD_FRAMES = [
    ("this is not json", "-1", "RpcFrameworkError"),
    ('{"an": "object"}', "-1", "RpcFrameworkError"),
    ([2, "m1", "Heartbeat"], "m1", "RpcFrameworkError"),
    ([2, "x" * 37, "Heartbeat", {}], "-1", "RpcFrameworkError"),
    ([9, "m2", "Heartbeat", {}], "m2", "MessageTypeNotSupported"),
    ([2, "m3", "MakeCoffee", {}], "m3", "NotImplemented"),
    ([2, "m4", "Reset", {"type": "Immediate"}], "m4", "NotSupported"),
    ([2, "m5", "Heartbeat", []], "m5", "FormatViolation"),
    ([2, "m6", "Heartbeat", {"unexpected": 1}], "m6", "FormatViolation"),
    ([2, "m7", "BootNotification", {"reason": "PowerUp"}], "m7", "OccurrenceConstraintViolation"),
    (
        [
            2,
            "m8",
            "StatusNotification",
            {"timestamp": NOW, "connectorStatus": "Available", "evseId": "one", "connectorId": 1},
        ],
        "m8",
        "TypeConstraintViolation",
    ),
    (
        [2, "m9", "StatusNotification", {"timestamp": NOW, "connectorStatus": "OnFire", "evseId": 1, "connectorId": 1}],
        "m9",
        "PropertyConstraintViolation",
    ),
]


@pytest.mark.parametrize(("frame", "message_id", "code"), BAD_FRAMES)
async def test_a_bad_frame_gets_the_callerror_the_spec_names_and_the_connection_lives_on(
    live_csms, frame, message_id, code
):
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as cs:
        # When the station sends a malformed frame
        answer = await cs.rpc(frame)
        # Then it gets a CALLERROR with the spec's code for it
        assert answer[:3] == [4, message_id, code]
        assert isinstance(answer[3], str)
        assert isinstance(answer[4], dict)
        # And the connection stays usable
        assert (await cs.rpc([2, "after", "Heartbeat", {}]))[:2] == [3, "after"]
    logged = await sync_to_async(MessageLog.objects.filter(station=station, error_code=code).count)()
    assert logged == 1


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_every_station_initiated_action_is_answered_with_a_schema_valid_response(live_csms, version):
    # Given a connected station of this OCPP version
    station = await sync_to_async(StationFactory.create)()
    payloads = station_payloads(version)
    assert set(payloads) == ocpp_j.STATION_ACTIONS[version]
    async with raw_station(live_csms, station.station_id, version=version) as cs:
        for n, (action, payload) in enumerate(sorted(payloads.items())):
            # When it sends the action with a valid payload
            answer = await cs.rpc([2, f"c{n}", action, payload])
            # Then the answer is a CALLRESULT that the library's own response schema accepts
            assert answer[:2] == [3, f"c{n}"], (action, answer)
            result = ocpp.messages.CallResult(f"c{n}", answer[2], action=action)
            ocpp.messages._validate_payload(result, version)
    # And every message is in the log with its answer, and the domain ones are stored as data
    logged = {
        row
        async for row in MessageLog.objects.filter(station=station, message_type=2, error_code="").values_list(
            "action", flat=True
        )
    }
    assert logged == set(payloads)
    assert await sync_to_async(MeterValue.objects.filter(station=station).count)() == 6
    assert await sync_to_async(Transaction.objects.filter(station=station).count)() == 1
    assert await sync_to_async(DeviceVariable.objects.filter(station=station).count)() == 2
    assert await sync_to_async(EvChargingNeeds.objects.filter(station=station).count)() == 1
    kinds = {row async for row in StationEvent.objects.filter(station=station).values_list("kind", flat=True)}
    assert {"NotifyEvent", "SecurityEvent", "FirmwareStatus", "LogStatus", "ChargingLimit", "DataTransfer"} <= kinds
    if version == "2.1":
        assert await sync_to_async(DerAlarm.objects.filter(station=station).count)() == 1
        needs = await sync_to_async(EvChargingNeeds.objects.get)(station=station)
        assert (needs.max_discharge_power_w, needs.ev_min_v2x_energy_request_wh, needs.target_soc) == (
            10000,
            -15000,
            80,
        )


async def test_meter_values_are_stored_as_integers_with_their_dimensions(live_csms):
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as cs:
        await cs.rpc([2, "mv", "MeterValues", station_payloads("2.1")["MeterValues"]])
    rows = [
        row
        async for row in MeterValue.objects.filter(station=station).values_list(
            "measurand", "value", "unit", "location", "evse_id"
        )
    ]
    assert sorted(rows) == [
        ("Energy.Active.Import.Register", 12500, "Wh", "", 1),
        ("Power.Active.Import", -3600, "W", "", 1),
        ("SoC", 64, "Percent", "EV", 1),
    ]


async def test_send_and_callresulterror_frames_of_ocpp21_are_stored_and_never_answered(live_csms):
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as cs:
        # When the station sends a SEND and a CALLRESULTERROR
        await cs.send([6, "s1", "NotifyPeriodicEventStream", SEND_21["NotifyPeriodicEventStream"]])
        await cs.send([5, "r1", "FormationViolation", "your CALLRESULT was bad", {}])
        # Then nothing answers them: the next frame received is the answer to the next CALL
        assert (await cs.rpc([2, "hb", "Heartbeat", {}]))[:2] == [3, "hb"]
    types = {row async for row in MessageLog.objects.filter(station=station).values_list("message_type", "action")}
    assert {(6, "NotifyPeriodicEventStream"), (5, ""), (2, "Heartbeat")} <= types


async def test_an_ocpp201_connection_does_not_accept_ocpp21_frame_types(live_csms):
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id, version="2.0.1") as cs:
        answer = await cs.rpc([6, "s1", "NotifyPeriodicEventStream", SEND_21["NotifyPeriodicEventStream"]])
        assert answer[:3] == [4, "s1", "MessageTypeNotSupported"]


async def test_a_retransmitted_call_is_answered_again_and_stored_once(live_csms):
    # Given a station that sent MeterValues
    station = await sync_to_async(StationFactory.create)()
    frame = [2, "retx-1", "MeterValues", station_payloads("2.1")["MeterValues"]]
    async with raw_station(live_csms, station.station_id) as cs:
        first = await cs.rpc(frame)
        # When it sends the very same CALL again (it missed the answer), on this and on a new connection
        second = await cs.rpc(frame)
    async with raw_station(live_csms, station.station_id) as cs:
        third = await cs.rpc(frame)
        boot = [2, "retx-2", "BootNotification", station_payloads("2.1")["BootNotification"]]
        boot_answers = [await cs.rpc(boot), await cs.rpc(boot)]
    # Then each time it gets the same answer, and the message and its values are stored once
    assert first == second == third == [3, "retx-1", {}]
    # And a BootNotification, whose answer is the present state (status, time), is answered fresh each time
    assert [a[2]["status"] for a in boot_answers] == ["Accepted", "Accepted"]
    assert boot_answers[0][2]["currentTime"] < boot_answers[1][2]["currentTime"]
    assert await sync_to_async(MeterValue.objects.filter(station=station).count)() == 3
    assert await sync_to_async(MessageLog.objects.filter(station=station, message_id="retx-1").count)() == 1


async def test_concurrent_stations_are_all_answered_after_commit(live_csms):
    stations = await sync_to_async(StationFactory.create_batch)(20)

    async def run(station, n):
        async with raw_station(live_csms, station.station_id) as cs:
            for i in range(5):
                payload = {"evseId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": n * 10 + i}]}]}
                assert await cs.rpc([2, f"m{i}", "MeterValues", payload]) == [3, f"m{i}", {}]

    await asyncio.gather(*(run(s, n) for n, s in enumerate(stations)))
    assert await sync_to_async(MeterValue.objects.filter(station__in=stations).count)() == 100
