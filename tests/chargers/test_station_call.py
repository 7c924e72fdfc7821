"""CSMS-initiated calls: ``station_call`` reaches the process holding the socket and returns the answer."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from ocpp.v21 import call_result as result21

from chargers.models import MessageLog, StationCommand
from chargers.services.station_call import (
    CallErrorResponse,
    CallPayloadInvalid,
    CallTimeout,
    StationOffline,
    StationUnknown,
)
from tests.chargers.conftest import raw_station, station_client, wait_until
from tests.chargers.factories import StationFactory

pytestmark = [
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
]

V2X_PROFILE = {
    "id": 100,
    "stackLevel": 1,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Absolute",
    "chargingSchedule": [
        {
            "id": 1,
            "startSchedule": "2026-01-15T10:00:00Z",
            "chargingRateUnit": "W",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": -7000.0, "dischargeLimit": -11000.0},
                {
                    "startPeriod": 900,
                    "operationMode": "LocalFrequency",
                    "v2xBaseline": 0.0,
                    "v2xFreqWattCurve": [
                        {"frequency": 49.8, "power": -10000.0},
                        {"frequency": 50.0, "power": 0.0},
                        {"frequency": 50.2, "power": 10000.0},
                    ],
                },
            ],
        }
    ],
}


async def test_station_call_round_trips_a_v2x_charging_profile(live_csms, call_station):
    # Given a connected OCPP 2.1 station that accepts charging profiles
    station = await sync_to_async(StationFactory.create)()
    received = []

    async def on_set_charging_profile(evse_id, charging_profile, **_):
        received.append((evse_id, charging_profile))
        return result21.SetChargingProfile(status="Accepted")

    async with station_client(
        live_csms, station.station_id, handlers={"SetChargingProfile": on_set_charging_profile}
    ) as client:
        await client.cp.call(_boot())
        # When the CSMS sends SetChargingProfile with V2X operation modes
        answer = await call_station(
            station.station_id, "SetChargingProfile", {"evseId": 1, "chargingProfile": V2X_PROFILE}
        )
    # Then the station got the profile and its answer comes back to the caller
    assert answer == {"status": "Accepted"}
    assert received[0][0] == 1
    assert received[0][1]["charging_schedule"][0]["charging_schedule_period"][1]["operation_mode"] == "LocalFrequency"
    # And the exchange is logged (records of the CSMS's calls are written once their burst pauses)
    logs = MessageLog.objects.filter(station=station, direction="out", action="SetChargingProfile")
    logged = await wait_until(lambda: sync_to_async(logs.first)())
    assert logged.response == {"status": "Accepted"}


async def test_der_control_and_afrr_signal_reach_the_station(live_csms, call_station):
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as cs:

        async def answer_next():
            frame = await cs.recv()
            await cs.send([3, frame[1], {"status": "Accepted"}])
            return frame

        control = {
            "isDefault": False,
            "controlId": "droop-7",
            "controlType": "FreqDroop",
            "freqDroop": {
                "priority": 1,
                "overFreq": 50.2,
                "underFreq": 49.8,
                "overDroop": 4.0,
                "underDroop": 4.0,
                "responseTime": 0.5,
            },
        }
        der = asyncio.create_task(call_station(station.station_id, "SetDERControl", control))
        der_frame = await answer_next()
        afrr = asyncio.create_task(
            call_station(station.station_id, "AFRRSignal", {"timestamp": "2026-01-15T10:00:04Z", "signal": -37})
        )
        afrr_frame = await answer_next()
        assert await der == {"status": "Accepted"}
        assert await afrr == {"status": "Accepted"}
    assert der_frame[2:] == ["SetDERControl", control]
    assert afrr_frame[2:] == ["AFRRSignal", {"timestamp": "2026-01-15T10:00:04Z", "signal": -37}]


async def test_calls_to_one_station_are_sent_one_at_a_time_and_none_is_lost(live_csms, call_station):
    # Given a station that answers slowly
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as cs:
        # When three calls are made at once
        calls = [
            asyncio.create_task(call_station(station.station_id, "TriggerMessage", {"requestedMessage": "Heartbeat"}))
            for _ in range(3)
        ]
        seen = []
        for _ in range(3):
            frame = await cs.recv()
            seen.append(frame)
            # Then no second CALL arrives while the first is unanswered
            with pytest.raises(TimeoutError):
                await cs.recv(within=0.4)
            await cs.send([3, frame[1], {"status": "Accepted"}])
        results = await asyncio.gather(*calls)
    # And all three were delivered and answered
    assert [f[2] for f in seen] == ["TriggerMessage"] * 3
    assert len({f[1] for f in seen}) == 3
    assert results == [{"status": "Accepted"}] * 3


async def test_station_call_reports_callerror_timeout_offline_unknown_and_invalid_payloads(live_csms, call_station):
    station = await sync_to_async(StationFactory.create)()
    async with raw_station(live_csms, station.station_id) as cs:
        # A CALLERROR from the station
        task = asyncio.create_task(call_station(station.station_id, "Reset", {"type": "Immediate"}))
        frame = await cs.recv()
        await cs.send([4, frame[1], "NotSupported", "no reset here", {}])
        with pytest.raises(CallErrorResponse) as error:
            await task
        assert error.value.code == "NotSupported"
        # No answer at all
        with pytest.raises(CallTimeout):
            await call_station(
                station.station_id, "GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"}, 1.0
            )
        # A CALLRESULT that breaks the response schema
        task = asyncio.create_task(call_station(station.station_id, "Reset", {"type": "Immediate"}))
        frame = await cs.recv()
        while frame[2] != "Reset":  # skip the GetBaseReport we never answered
            frame = await cs.recv()
        await cs.send([3, frame[1], {"status": "Maybe"}])
        with pytest.raises(CallErrorResponse):
            await task
        # A payload that does not match the schema is never sent
        with pytest.raises(CallPayloadInvalid):
            await call_station(station.station_id, "Reset", {"type": "Sometime"})
        with pytest.raises(CallPayloadInvalid):
            await call_station(station.station_id, "Heartbeat", {})

    async def offline():
        try:
            await call_station(station.station_id, "Reset", {"type": "Immediate"})
        except StationOffline:
            return True
        return False

    await wait_until(offline)
    with pytest.raises(StationUnknown):
        await call_station("no-such-station", "Reset", {"type": "Immediate"})
    # And every attempt on the station is in the audit trail with its outcome (the unknown station is not)
    audit = StationCommand.objects.filter(station=station).order_by("requested_at", "id")
    rows = [row async for row in audit]
    outcomes = [(r.action, r.outcome) for r in rows]
    assert outcomes[:5] == [
        ("Reset", "call_error"),
        ("GetBaseReport", "timeout"),
        ("Reset", "call_error"),
        ("Reset", "refused"),
        ("Heartbeat", "refused"),
    ]
    assert {outcome for _, outcome in outcomes[5:]} <= {"offline", "timeout"}
    assert outcomes[-1] == ("Reset", "offline")
    assert rows[0].answer == {"errorCode": "NotSupported", "errorDescription": "no reset here", "errorDetails": {}}
    assert rows[0].answered_at is not None
    assert rows[1].answered_at is None
    assert not await StationCommand.objects.filter(station_ident="no-such-station").aexists()


def _boot():
    from ocpp.v21 import call

    return call.BootNotification(charging_station={"model": "VX-1", "vendor_name": "Acme"}, reason="PowerUp")
