"""Export and import caps of a portfolio (a utility's limits) bounding dispatch: the arithmetic by hand, the state
loader reading the stored caps, and both the regulation dispatcher and the reserve run sending setpoints within
them to stand-in stations through the real fan-out."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from fleet.numerics.arrays import FleetArrays
from fleet.numerics.snapshot import VehicleSnapshot
from tests.vpp.stand_ins import AnsweringStation, fleet_of
from vpp.dispatch.dispatcher import Dispatcher, DispatchState, Signal
from vpp.dispatch.reserve import ReserveEvent, ReserveRun, reserve_run_start, reserve_runs_stop
from vpp.dispatch.selectors import power_caps_of
from vpp.dispatch.services import power_cap_end, power_cap_record
from vpp.dispatch.values import Cap, capped_allocate

NOW = 1_800_000_000.0
HOUR = 3_600.0


def _car(vehicle_id: int, **fields: Any) -> VehicleSnapshot:
    """A 60 kWh car at 36 kWh, floor 12 kWh, 11 kW both ways, efficiency 1 (round numbers), no departure."""
    values: dict[str, Any] = {
        "vehicle_id": vehicle_id, "capacity_wh": 60_000, "soc_wh": 36_000, "floor_wh": 12_000,
        "max_charge_w": 11_000, "max_discharge_w": 11_000, "charge_efficiency": 1.0, "discharge_efficiency": 1.0,
        "station_id": f"cap-{vehicle_id}", "evse_id": 1,
    }  # fmt: skip
    values.update(fields)
    return VehicleSnapshot(**values)


def test_an_export_cap_lowers_each_cars_discharge_pro_rata_and_nothing_else() -> None:
    # Given two cars able to discharge 10 kW and 5 kW, and a 6 kW export cap in force
    fleet = FleetArrays.from_snapshots([_car(1, max_discharge_w=10_000), _car(2, max_discharge_w=5_000)])
    caps = (Cap(NOW - 60, NOW + HOUR, export_w=6_000),)
    # When dispatch asks for 15 kW of discharge
    capped = capped_allocate(fleet, -15_000, caps, now=NOW, duration_s=60)
    # Then each car discharges 6/15 of its power: 4 kW and 2 kW, 6 kW in all, and the stations' lower bounds say so
    assert capped.allocation.power_w.tolist() == [-4_000, -2_000]
    assert (capped.setpoint_w, capped.bounds.lo.tolist()) == (-6_000, [-4_000, -2_000])
    # and their charging room is untouched (11 kW each)
    assert capped.bounds.hi.tolist() == [11_000, 11_000]
    assert capped.note == "export cap 6000 W"
    # Without the cap the same request discharges 15 kW
    assert capped_allocate(fleet, -15_000, (), now=NOW, duration_s=60).allocation.power_w.tolist() == [-10_000, -5_000]


def test_an_export_cap_not_yet_in_force_changes_nothing() -> None:
    fleet = FleetArrays.from_snapshots([_car(1), _car(2)])
    later = (Cap(NOW + 60, NOW + HOUR, export_w=0),)
    capped = capped_allocate(fleet, -22_000, later, now=NOW, duration_s=60)
    assert (capped.allocation.power_w.tolist(), capped.note) == ([-11_000, -11_000], "")


def test_an_import_cap_caps_charging_but_a_departure_need_wins() -> None:
    # Given car A leaving in 2 h for 53 kWh: charging 11 kW in its second hour it must gain 6 kWh in this one, so
    # it charges at least 6 kW now; car B cannot discharge (0 W) and has no departure: at least 0 W
    leaving = _car(1, departure=datetime.fromtimestamp(NOW + 2 * HOUR, UTC), target_wh=53_000)
    fleet = FleetArrays.from_snapshots([leaving, _car(2, max_discharge_w=0)])
    # When a 9 kW import cap is in force and dispatch asks for 20 kW
    capped = capped_allocate(fleet, 20_000, (Cap(NOW - 60, NOW + HOUR, import_w=9_000),), now=NOW, duration_s=HOUR)
    # Then the fleet charges 9 kW, and no station may charge past its allocated power
    assert (capped.setpoint_w, int(capped.allocation.power_w.sum())) == (9_000, 9_000)
    assert capped.bounds.hi.tolist() == capped.allocation.power_w.tolist()
    assert capped.note == "import cap 9000 W"
    # When the cap is 2 kW: car A still charges its 6 kW (the departure need wins) and the note says so
    tight = capped_allocate(fleet, 20_000, (Cap(NOW - 60, NOW + HOUR, import_w=2_000),), now=NOW, duration_s=HOUR)
    assert tight.allocation.power_w.tolist() == [6_000, 0]
    assert tight.note == "import cap 2000 W: departure need 6000 W wins"


def test_the_tightest_of_overlapping_caps_applies() -> None:
    fleet = FleetArrays.from_snapshots([_car(1), _car(2)])
    caps = (Cap(NOW - 60, NOW + HOUR, export_w=8_000), Cap(NOW - 60, NOW + 60, export_w=3_000, import_w=5_000))
    capped = capped_allocate(fleet, -22_000, caps, now=NOW, duration_s=60)
    assert (int(capped.allocation.power_w.sum()), capped.note) == (-3_000, "export cap 3000 W; import cap 5000 W")
    # An import cap of -30 kW (export at least 30 kW) against a 2 kW export cap: the export cap wins
    contrary = (Cap(NOW - 60, NOW + 60, export_w=2_000, import_w=-30_000),)
    capped = capped_allocate(fleet, -30_000, contrary, now=NOW, duration_s=60)
    assert (capped.setpoint_w, int(capped.allocation.power_w.sum())) == (-2_000, -2_000)


def test_the_state_loader_reads_the_caps_in_force_or_to_come_and_an_ended_cap_is_gone(db: Any) -> None:
    # Given a cap under way, one starting in an hour, one over, and one of another portfolio
    now = timezone.now().replace(microsecond=0)
    for ref, start, end, portfolio in (
        ("now", now - timedelta(minutes=1), now + timedelta(minutes=10), "fleet-1"),
        ("later", now + timedelta(hours=1), now + timedelta(hours=2), "fleet-1"),
        ("over", now - timedelta(hours=2), now - timedelta(hours=1), "fleet-1"),
        ("other", now - timedelta(minutes=1), now + timedelta(minutes=10), "fleet-2"),
    ):
        power_cap_record(
            portfolio=portfolio, source="utility_api", source_ref=ref, start=start, end=end, export_w=1_000
        )
    # Then the loader sees the first two
    caps = power_caps_of(portfolio="fleet-1", at=now)
    assert sorted(c.start_s - now.timestamp() for c in caps) == [-60, 3_600]
    # And a cap withdrawn mid-way ends then, one withdrawn before its start is gone
    assert power_cap_end(source_ref="now", at=now)
    assert power_cap_end(source_ref="later", at=now)
    assert power_caps_of(portfolio="fleet-1", at=now) == ()
    # And a retransmission stores nothing new; a negative export cap is refused
    assert not power_cap_record(portfolio="fleet-1", source="utility_api", source_ref="over", start=now,
                                end=now + timedelta(minutes=1), export_w=5)[1]  # fmt: skip
    with pytest.raises(ValueError, match="must be >= 0"):
        power_cap_record(portfolio="fleet-1", source="utility_api", source_ref="neg", start=now,
                         end=now + timedelta(minutes=1), export_w=-1)  # fmt: skip


async def test_the_regulation_dispatcher_sends_setpoints_within_the_export_cap(stations: Any) -> None:
    # Given 20 cars able to discharge 11 kW each (220 kW), 100 kW awarded, a 6 kW export cap in force
    fleet, routes = fleet_of(20)
    agents = {r.station_id: AnsweringStation() for r in routes}
    for sid, agent in agents.items():
        stations(sid, agent)

    def state(**_: Any) -> DispatchState:
        now = time.time()
        return DispatchState(fleet, routes, 100_000, now + 3600, now, caps=(Cap(now - 60, now + 3600, export_w=6_000),))

    dispatcher = Dispatcher(product_id=1, portfolio="default", loader=state, recorder=None, telemetry=False)
    dispatcher.start()
    try:
        await dispatcher.ready()
        # When the operator asks for full regulation up (100 kW of discharge)
        result = await dispatcher.dispatch(Signal(1, "default", Decimal(1), datetime.now(UTC), "file", time.time()))
    finally:
        await dispatcher.stop()
    # Then the stations got 6 kW of discharge in all, 300 W each (11 kW x 6/220), and may not discharge more
    periods = [p["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
               for agent in agents.values() for _, p in agent.calls]  # fmt: skip
    assert [(p["setpoint"], p["dischargeLimit"]) for p in periods] == [(-300.0, -300.0)] * 20
    assert (result.setpoint_w, result.capped) == (-6_000, "export cap 6000 W")


async def test_the_reserve_run_sends_setpoints_within_the_export_cap(stations: Any) -> None:
    # Given 10 cars (11 kW discharge each) drawing nothing, a 50 kW reserve event, and a 4 kW export cap
    fleet, routes = fleet_of(10)
    agents = {r.station_id: AnsweringStation() for r in routes}
    for sid, agent in agents.items():
        stations(sid, agent)
    now = datetime.now(UTC)
    caps = (Cap(now.timestamp() - 60, now.timestamp() + 600, export_w=4_000),)
    event = ReserveEvent(1, 1, "default", 50_000, now, now + timedelta(minutes=10), time.time())
    run = ReserveRun(
        event=event,
        loader=lambda **kw: DispatchState(fleet, routes, 0, None, kw["now"], caps=caps),
        baseline=lambda *_: 0,
        recorder=None,
        resend_s=60,
    )
    reserve_run_start(run=run)
    try:
        await asyncio.wait_for(run.first_sent.wait(), 10)
    finally:
        await reserve_runs_stop()
    # Then 4 kW went out in all, 400 W a car, instead of the 50 kW asked, and no station may discharge more
    periods = [p["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
               for agent in agents.values() for _, p in agent.calls]  # fmt: skip
    assert [(p["setpoint"], p["dischargeLimit"]) for p in periods] == [(-400.0, -400.0)] * 10
    assert (run.results[0].setpoint_w, run.results[0].capped) == (-4_000, "export cap 4000 W")
