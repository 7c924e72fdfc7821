"""Regulation dispatch: setpoint arithmetic, station commands, the in-memory dispatcher and the per-node fan-out."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargers import ocpp_j
from chargers.fanout import Command, calls_fanout
from fleet.numerics.arrays import FleetArrays
from tests.vpp.stand_ins import AnsweringStation, fleet_of
from vpp.dispatch.dispatcher import (
    Dispatcher,
    DispatchState,
    Route,
    Signal,
    basepoint_choose,
    fleet_setpoint_w,
    profile_payload,
)

# --- arithmetic ------------------------------------------------------------------------------------------------


def test_a_positive_signal_asks_the_fleet_to_charge_less_by_signal_times_capacity():
    # Given a basepoint of 100 kW charging and 400 kW awarded
    # When the operator asks for half regulation up, then full down
    up = fleet_setpoint_w(basepoint_w=100_000, signal=0.5, capacity_w=400_000)
    down = fleet_setpoint_w(basepoint_w=100_000, signal=-1.0, capacity_w=400_000)
    # Then the fleet moves to 100 - 200 = -100 kW (discharging), and 100 + 400 = 500 kW
    assert (up, down) == (-100_000, 500_000)


def test_a_reserve_deployment_adds_discharge_on_top_of_regulation():
    assert fleet_setpoint_w(basepoint_w=0, signal=0.25, capacity_w=100_000, reserve_w=50_000) == -75_000


def test_a_signal_outside_the_normalised_range_is_clipped():
    assert fleet_setpoint_w(basepoint_w=0, signal=3.0, capacity_w=1_000) == -1_000


@given(
    base=st.integers(-(10**7), 10**7),
    capacity=st.integers(0, 10**7),
    signal=st.floats(-1.0, 1.0, allow_nan=False),
)
def test_the_setpoint_never_leaves_the_awarded_band(base, capacity, signal):
    setpoint = fleet_setpoint_w(basepoint_w=base, signal=signal, capacity_w=capacity)
    assert base - capacity <= setpoint <= base + capacity


def test_the_basepoint_leaves_room_for_the_capacity_on_both_sides():
    # preferred 0 W, but the fleet can only go down to -50 kW: the basepoint moves up so -capacity still fits
    assert basepoint_choose(min_w=-50_000, max_w=200_000, capacity_w=80_000, preferred_w=0, current_w=None) == 30_000
    # a current basepoint that still fits is kept (stable for the operator)
    assert basepoint_choose(min_w=-200_000, max_w=200_000, capacity_w=80_000, preferred_w=0, current_w=50_000) == 50_000
    # a fleet too small for the capacity regulates around the middle of its range
    assert basepoint_choose(min_w=-10_000, max_w=30_000, capacity_w=80_000, preferred_w=0, current_w=None) == 10_000


# --- station commands --------------------------------------------------------------------------------------------


def test_a_2_1_station_gets_a_central_setpoint_txprofile_that_the_schema_accepts():
    route = Route("st-1", 1, "2.1", "tx-9")
    payload = profile_payload(route, -4_200, -7_000, 11_000)
    ocpp_j.check(ocpp_j.request_validator("2.1", "SetChargingProfile"), payload)
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period == {
        "startPeriod": 0,
        "operationMode": "CentralSetpoint",
        "setpoint": -4200.0,
        "limit": 11000.0,
        "dischargeLimit": -7000.0,
    }
    assert payload["chargingProfile"]["transactionId"] == "tx-9"
    assert payload["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"


def test_a_2_0_1_station_gets_a_charging_rate_limit_only():
    payload = profile_payload(Route("st-2", 1, "2.0.1", "tx-1"), 3_000, 0, 7_400)
    ocpp_j.check(ocpp_j.request_validator("2.0.1", "SetChargingProfile"), payload)
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 3000.0}


# --- the dispatcher, in memory ----------------------------------------------------------------------------------


def _fleet(n: int) -> tuple[FleetArrays, list[Route]]:
    return fleet_of(n)


async def _dispatch_once(stations, state: Any, value: str, recorder: Any = None) -> tuple[Any, list[float]]:
    """Dispatch one signal value to stand-in stations for the routes of ``state()``; the result and the setpoints."""
    agents = {r.station_id: AnsweringStation() for r in state().routes}
    for sid, agent in agents.items():
        stations(sid, agent)
    dispatcher = Dispatcher(product_id=1, portfolio="default", loader=lambda **_: state(), recorder=recorder,
                            telemetry=False)  # fmt: skip
    dispatcher.start()
    try:
        await dispatcher.ready()
        result = await dispatcher.dispatch(Signal(1, "default", Decimal(value), datetime.now(UTC), "file", time.time()))
    finally:
        await dispatcher.stop()
    setpoints = [
        payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["setpoint"]
        for agent in agents.values()
        for _, payload in agent.calls
    ]
    return result, setpoints


async def test_a_signal_reaches_every_station_with_setpoints_that_add_up_to_the_fleet_setpoint(stations):
    # Given 20 plugged-in vehicles on stations held by this process and 100 kW awarded
    fleet, routes = _fleet(20)
    recorded: list[Any] = []

    def state() -> DispatchState:
        return DispatchState(fleet, routes, 100_000, time.time() + 3600, time.time(), preferred_basepoint_w=0)

    # When the operator asks for 0.6 regulation up
    result, setpoints = await _dispatch_once(stations, state, "0.6", recorder=recorded.append)
    # Then every station got one SetChargingProfile, and the setpoints add up to 0 - 0.6 x 100 kW
    assert len(setpoints) == 20
    assert sum(setpoints) == -60_000
    assert result.accepted == 20
    assert result.last_ms is not None
    assert recorded == [result]


async def test_a_reserve_event_in_force_adds_its_discharge_to_the_dispatched_setpoints(stations):
    # Given 20 vehicles, 100 kW of regulation awarded and a 30 kW reserve event in force for another minute
    fleet, routes = _fleet(20)

    def state() -> DispatchState:
        now = time.time()
        return DispatchState(fleet, routes, 100_000, now + 3600, now, reserve_w=30_000, reserve_until=now + 60)

    # When the operator asks for 0.6 regulation up
    result, setpoints = await _dispatch_once(stations, state, "0.6")
    # Then the stations' setpoints add up to 0 - 0.6 x 100 kW - 30 kW
    assert (result.reserve_w, result.setpoint_w, sum(setpoints)) == (30_000, -90_000, -90_000)


async def test_telemetry_updates_the_state_of_charge_between_reloads(stations):
    fleet, routes = _fleet(2)
    dispatcher = Dispatcher(
        product_id=1,
        portfolio="default",
        loader=lambda **_: DispatchState(fleet, routes, 10_000, time.time() + 60, time.time()),
        recorder=None,
        telemetry=False,
    )
    dispatcher.start()
    try:
        await dispatcher.ready()
        # When station disp-2 reports its car at 20 % (its floor)
        dispatcher.telemetry_apply([{"kind": "meter", "station_id": "disp-2", "values": {"SoC": 20}}])
        for route in routes:
            stations(route.station_id, AnsweringStation())
        result = await dispatcher.dispatch(Signal(1, "default", Decimal("1"), datetime.now(UTC), "file", time.time()))
    finally:
        await dispatcher.stop()
    # Then that car is not discharged at all, the other carries the whole request
    assert result.allocation is not None
    assert result.allocation.as_dict() == {1: -10_000, 2: 0}


async def test_without_an_award_nothing_is_sent(stations):
    fleet, routes = _fleet(1)
    agent = AnsweringStation()
    stations("disp-1", agent)
    dispatcher = Dispatcher(
        product_id=1,
        portfolio="default",
        loader=lambda **_: DispatchState(fleet, routes, 0, None, time.time()),
        recorder=None,
        telemetry=False,
    )
    dispatcher.start()
    try:
        result = await dispatcher.dispatch(Signal(1, "default", Decimal("0.5"), datetime.now(UTC), "file", time.time()))
    finally:
        await dispatcher.stop()
    assert agent.calls == []
    assert "no regulation capacity" in result.skipped


async def test_a_station_no_process_holds_is_reported_offline_not_waited_for():
    outcome = await calls_fanout([Command("nobody-here", "SetChargingProfile", {})], timeout=1.0)
    if os.environ.get("REDIS_URL"):
        assert outcome.finished_at - outcome.started_at < 2.0
    else:  # one process: known at once
        assert outcome.finished_at - outcome.started_at < 0.1
    assert [(r.station_id, r.status) for r in outcome.results] == [("nobody-here", "offline")]


# --- across server processes ------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="needs REDIS_URL: in-memory layers cannot reach another process"
)
async def test_the_fan_out_reaches_stations_held_by_another_server_process(live_csms):
    from asgiref.sync import sync_to_async
    from ocpp.v21 import call_result

    from tests.chargers.conftest import station_client
    from tests.chargers.factories import StationFactory

    # Given a station connected to another server process on the same Redis
    station = await sync_to_async(StationFactory.create)()
    received: list[dict[str, Any]] = []

    async def on_profile(**kwargs: Any) -> Any:
        received.append(kwargs)
        return call_result.SetChargingProfile(status="Accepted")

    async with station_client(live_csms, station.station_id, handlers={"SetChargingProfile": on_profile}):
        await asyncio.sleep(0.5)  # the node joins the csms.nodes group when its first station registers
        payload = profile_payload(Route(station.station_id, 1, "2.1", ""), -1_000, -7_000, 7_000)
        # When this process fans a command out
        outcome = await calls_fanout([Command(station.station_id, "SetChargingProfile", payload)], timeout=5.0)
    # Then the other node delivered it and answered for its station, in one aggregated reply
    assert [(r.station_id, r.status, r.answer) for r in outcome.results] == [(station.station_id, "result", "Accepted")]
    assert outcome.nodes == 1
    assert received[0]["charging_profile"]["charging_schedule"][0]["charging_schedule_period"][0]["setpoint"] == -1000


async def test_every_setpoint_expires_by_itself_after_the_hold_unless_a_newer_one_replaces_it(stations):
    # Given 3 vehicles on stations held by this process and 30 kW awarded
    fleet, routes = _fleet(3)
    agents = {r.station_id: AnsweringStation() for r in routes}
    for sid, agent in agents.items():
        stations(sid, agent)

    def state() -> DispatchState:
        return DispatchState(fleet, routes, 30_000, time.time() + 3600, time.time(), preferred_basepoint_w=0)

    dispatcher = Dispatcher(product_id=1, portfolio="default", loader=lambda **_: state(), recorder=None,
                            telemetry=False, hold_s=60)  # fmt: skip
    dispatcher.start()
    try:
        await dispatcher.ready()
        # When a discharge is dispatched
        sent_at = datetime.now(UTC)
        await dispatcher.dispatch(Signal(1, "default", Decimal("1"), sent_at, "file", time.time()))
    finally:
        await dispatcher.stop()
    # Then every profile ends at the hold (so a fleet nobody commands any more stops discharging by itself)
    valid_to = [
        datetime.fromisoformat(payload["chargingProfile"]["validTo"]) for a in agents.values() for _, payload in a.calls
    ]
    assert len(valid_to) == 3
    assert all(timedelta(seconds=55) < end - sent_at < timedelta(seconds=65) for end in valid_to)
