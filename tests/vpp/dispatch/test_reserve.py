"""Synchronized reserve end to end: bid -> award -> event -> setpoints reaching the stations by themselves (no
regulation signal) -> meter values -> measurement -> settlement, money computed by hand.

The stations are stand-ins in this process's fan-out registry (tests.vpp.stand_ins): what a test checks is what
reached them through the real fan-out. The event runs on a fixed calendar (PJM's 1 July 2017, whose SRMCPs are in
``markets/data/pjm-synchronized-reserve-2017-07.csv``) on a clock that runs 600 times faster than the wall clock,
so a 20-minute event runs in two seconds.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chargers.models import MeterValue, Station
from markets.models import Bid, MarketOperator, Product
from markets.regulation.models import ReserveDeployment, SignalSource
from markets.regulation.services import energy_price_record, reserve_deployment_record
from markets.regulation.settling import settlement_compute
from markets.reserve.services import ReserveNotMeasured, reserve_event_measure
from markets.services.clearing import market_clear_simulated
from markets.services.prices import prices_import_pjm_sr
from tests.chargers.factories import StationFactory
from tests.markets.regulation.data import regulation_product
from tests.vpp.stand_ins import AnsweringStation, fleet_of
from vpp.dispatch.reserve import ReserveEvent, ReserveRun, reserve_run_start, reserve_runs_stop
from vpp.dispatch.reserve_intake import reserve_dispatch_end
from vpp.dispatch.selectors import fleet_power_at, regulation_dispatched_since
from vpp.dispatch.services import dispatch_record
from vpp.dispatch.values import DispatchState
from vpp.models import Dispatch

SRMCP_FILE = Path(__file__).resolve().parents[3] / "markets" / "data" / "pjm-synchronized-reserve-2017-07.csv"
EARLIER_HOUR = datetime(2017, 7, 1, 14, tzinfo=UTC)  # SRMCP $3.59 (EPT hour ending 11)
EVENT_HOUR = datetime(2017, 7, 1, 21, tzinfo=UTC)  # SRMCP $14.95 (EPT hour ending 18)
EVENT_START = EVENT_HOUR + timedelta(minutes=5)
EVENT_END = EVENT_START + timedelta(minutes=20)
BASELINE_W = 7_000  # each of the ten cars charges at 7 kW before the event
RESPONDS_AT = EVENT_START + timedelta(seconds=20)
FAILED = {"disp-1", "disp-2"}  # two chargers that ignore their setpoints


def _profile_setpoint(payload: dict[str, Any]) -> float:
    return payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["setpoint"]


def _reading(station: Station, at: datetime, power_w: int) -> list[MeterValue]:
    values = {"Power.Active.Import": max(power_w, 0), "Power.Active.Export": max(-power_w, 0)}
    return [
        MeterValue(station=station, evse_id=1, timestamp=at, received_at=at, measurand=m, value=v, unit="W",
                   source="MeterValues")
        for m, v in values.items()
    ]  # fmt: skip


def _store_power(stations: list[Station], start: datetime, end: datetime, power_of: dict[str, int]) -> None:
    """Each station's power every 10 s in [start, end), as the CSMS stores MeterValues."""
    rows: list[MeterValue] = []
    at = start
    while at < end:
        for station in stations:
            rows += _reading(station, at, power_of[station.station_id])
        at += timedelta(seconds=10)
    MeterValue.objects.bulk_create(rows, batch_size=5000)


def _market() -> tuple[Product, MarketOperator]:
    """PJM's synchronized reserve with July 2017's cleared SRMCPs, and 100 kW cleared at 14:00 and 21:00 UTC."""
    regulation_product()  # seeds the PJM products (again, after a transactional test flushed them)
    product = Product.objects.select_related("operator").get(operator__code="pjm", code="sync-reserve")
    with SRMCP_FILE.open() as stream:
        prices_import_pjm_sr(
            product=product, stream=stream, source_ref=SRMCP_FILE.name, subzone="PJM Mid Atlantic Dominion (MAD)"
        )
    for hour in (EARLIER_HOUR, EVENT_HOUR):
        Bid.objects.create(
            product=product, portfolio="default", interval_start=hour, interval_end=hour + timedelta(hours=1),
            quantity_w=100_000, price=D("1.00"), status=Bid.Status.SUBMITTED, external_ref=f"sr-{hour:%H}",
        )  # fmt: skip
        # The simulated operator clears the offer at the hour's SRMCP (the imported cleared price)
        market_clear_simulated(operator=product.operator, start=hour, end=hour + timedelta(hours=1))
    energy_price_record(operator_id=product.operator_id, interval_start=EVENT_HOUR, interval_minutes=60, price=D(50))
    return product, product.operator


def _fast_clock(start: datetime, speed: float) -> Any:
    t0 = time.time()
    return lambda: start.timestamp() + (time.time() - t0) * speed


async def _charging_before_the_event(stations: Any, count: int) -> tuple[list[Station], dict[str, AnsweringStation]]:
    """``count`` stations ``disp-<k>`` answering as stand-ins, each metered charging at ``BASELINE_W`` from the event's
    hour until 10 s into the event."""
    chargers = [await sync_to_async(StationFactory.create)(station_id=f"disp-{k}") for k in range(1, count + 1)]
    agents = {s.station_id: AnsweringStation() for s in chargers}
    for sid, agent in agents.items():
        stations(sid, agent)
    charging = {s.station_id: BASELINE_W for s in chargers}
    await sync_to_async(_store_power)(chargers, EVENT_HOUR, EVENT_START + timedelta(seconds=10), charging)
    return chargers, agents


@pytest.mark.django_db(transaction=True)
async def test_a_reserve_event_is_dispatched_by_itself_measured_and_settled_to_the_cent(stations):
    # Given 100 kW of synchronized reserve cleared at PJM's SRMCPs, ten cars charging at 7 kW, no regulation
    product, _ = await sync_to_async(_market)()
    chargers, agents = await _charging_before_the_event(stations, 10)
    before = {s.station_id: BASELINE_W for s in chargers}
    # When the operator calls an event at 21:05 for 20 minutes, naming neither product nor MW
    row, created = await sync_to_async(reserve_deployment_record)(
        portfolio="default", event_id="sr-2017-07-01-1705", power_w=None, start=EVENT_START, end=EVENT_END,
        source=SignalSource.UTILITY_API,
    )  # fmt: skip
    fleet, routes = fleet_of(10)
    event = ReserveEvent(row.pk, product.pk, "default", row.power_w, row.start, row.end, time.time())
    run = ReserveRun(
        event=event,
        loader=lambda **kw: DispatchState(fleet, routes, 0, None, kw["now"]),
        baseline=fleet_power_at,
        recorder=dispatch_record,
        clock=_fast_clock(EVENT_START, 600.0),
        resend_s=0.5,  # every 5 event-minutes
    )
    reserve_run_start(run=run)
    try:
        for _ in range(100):
            if run.released:
                break
            await asyncio.sleep(0.1)
    finally:
        await reserve_runs_stop()
    # Then the event deploys the award (100 kW of the reserve product); its setpoints went out by themselves, each
    # car 7 kW - 100 kW / 10 = -3 kW, re-sent while the event lasted and cleared at its end
    assert (created, row.product_id, row.power_w) == (True, product.pk, 100_000)
    assert run.baseline_w == 70_000
    first = [_profile_setpoint(agent.calls[0][1]) for agent in agents.values()]
    assert first == [-3_000.0] * 10
    assert all(len(agent.calls) >= 3 for agent in agents.values())
    assert {agent.calls[-1][0] for agent in agents.values()} == {"ClearChargingProfile"}
    assert all(
        datetime.fromisoformat(payload["chargingProfile"]["validTo"]) <= EVENT_END
        for agent in agents.values() for action, payload in agent.calls if action == "SetChargingProfile"
    )  # fmt: skip
    recorded = await sync_to_async(lambda: list(Dispatch.objects.filter(product=product).order_by("id")))()
    assert [(d.setpoint_w, d.reserve_w, d.accepted) for d in recorded[:1]] == [(-30_000, 100_000, 10)]

    # And the chargers follow from 20 s after the start, except two that stay at 7 kW; meter values to 22:00
    during = {sid: (BASELINE_W if sid in FAILED else round(first[0])) for sid in agents}
    await sync_to_async(_store_power)(chargers, EVENT_START + timedelta(seconds=10), RESPONDS_AT, before)
    await sync_to_async(_store_power)(chargers, RESPONDS_AT, EVENT_END, during)
    await sync_to_async(_store_power)(chargers, EVENT_END, EVENT_HOUR + timedelta(hours=1, seconds=10), before)

    # When the event is measured (2 min after its end) and its hour settled
    measured = await sync_to_async(reserve_event_measure)(deployment=row, now=EVENT_END + timedelta(minutes=3))
    assert row.product is not None
    reserve = row.product
    award = await sync_to_async(lambda: reserve.awards.get(interval_start=EVENT_HOUR))()
    settlement = await sync_to_async(settlement_compute)(award=award, period_start=EVENT_HOUR)

    # Then: fleet at 21:05 70 kW; from 21:05:20 8 x -3 kW + 2 x 7 kW = -10 kW: 80 kW at 10 min and held, 20 kW short
    assert (measured.baseline_w, measured.response_10min_w, measured.sustained_w) == (70_000, 80_000, 80_000)
    assert (measured.credited_w, measured.shortfall_w, measured.stations) == (80_000, 20_000, 10)
    # Penalty (3-day look-back, no earlier shortfall): 0.02 MW x 1 h x $3.59 + 0.02 MW x 1 h x $14.95 = $0.3708
    assert measured.penalty_exact == D("0.3708")
    # Reserve credit: 0.1 MW x 1 h x $14.95 = $1.495 -> $1.50 (half to even)
    # Energy at $50/MWh: a following car imports 7 kW x (320 s + 2,100 s) = 4,705.6 -> 4,706 Wh and exports
    #   3 kW x 1,180 s = 983.3 -> 983 Wh: (983 - 4,706) x $0.00005 = -$0.18615; a failed one imports 7,000 Wh:
    #   -$0.35. 8 x -0.18615 + 2 x -0.35 = -$2.1892 -> -$2.19
    # Degradation at $0.03125/kWh through the pack (efficiency 0.92): following 4,706 x 0.92 + 983 / 0.92 =
    #   5,398 Wh -> $0.1686875; failed 6,440 Wh -> $0.20125. 8 x 0.1686875 + 2 x 0.20125 = $1.752 -> $1.75
    # Net: 1.50 - 2.19 - 1.75 - 0.37 = -$2.81
    assert (settlement.capacity_credit, settlement.energy_amount) == (D("1.50"), D("-2.19"))
    assert (settlement.degradation_cost, settlement.penalty, settlement.net) == (D("1.75"), D("0.37"), D("-2.81"))
    lines = await sync_to_async(lambda: list(settlement.lines.all()))()
    assert len(lines) == 10
    assert sum(line.penalty for line in lines) == D("0.37")
    assert sum(line.net for line in lines) == D("-2.81")


@pytest.mark.django_db(transaction=True)
async def test_an_event_whose_fleet_has_no_car_plugged_in_sends_nothing_and_says_why(stations):
    product, _ = await sync_to_async(_market)()
    row, _ = await sync_to_async(reserve_deployment_record)(
        portfolio="default", event_id="sr-empty", power_w=None, start=EVENT_START, end=EVENT_END, source="utility_api"
    )
    fleet, routes = fleet_of(0)
    event = ReserveEvent(row.pk, product.pk, "default", row.power_w, row.start, row.end, time.time())
    run = ReserveRun(
        event=event,
        loader=lambda **kw: DispatchState(fleet, routes, 0, None, kw["now"]),
        baseline=lambda *_: 0,
        recorder=None,
        clock=_fast_clock(EVENT_START, 1.0),
        resend_s=60,
    )
    reserve_run_start(run=run)
    try:
        await asyncio.wait_for(run.first_sent.wait(), 10)
    finally:
        await reserve_runs_stop()
    assert run.results[0].skipped == "no plugged-in vehicle on a connected station"


def test_an_event_on_a_portfolio_without_a_reserve_award_needs_its_mw(db):
    regulation_product()
    with pytest.raises(ValueError, match="give power_w"):
        reserve_deployment_record(
            portfolio="fleet-9", event_id="x", power_w=None, start=EVENT_START, end=EVENT_END, source="utility_api"
        )
    row, _ = reserve_deployment_record(
        portfolio="fleet-9", event_id="y", power_w=20_000, start=EVENT_START, end=EVENT_END, source="utility_api"
    )
    assert (row.product_id, ReserveDeployment.objects.count()) == (None, 1)


@pytest.mark.django_db(transaction=True)
async def test_while_regulation_flows_the_regulation_setpoints_carry_the_event_and_the_run_sends_none(
    stations, monkeypatch
):
    from vpp.dispatch import dispatcher as dispatcher_module
    from vpp.dispatch.dispatcher import Dispatcher, Signal, dispatcher_for

    # Given regulation flowing for the portfolio: a dispatcher that just sent a value carrying a 100 kW event
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    fleet, routes = fleet_of(10)
    agents = {r.station_id: AnsweringStation() for r in routes}
    for sid, agent in agents.items():
        stations(sid, agent)

    def regulated(**_: Any) -> DispatchState:
        now = time.time()
        return DispatchState(fleet, routes, 20_000, now + 3600, now, reserve_w=100_000, reserve_until=now + 600)

    regulation = dispatcher_for(
        product_id=1,
        portfolio="default",
        factory=lambda: Dispatcher(product_id=1, portfolio="default", loader=regulated, recorder=None, telemetry=False),
    )
    try:
        await regulation.ready()
        result = await regulation.dispatch(Signal(1, "default", D("0.5"), datetime.now(UTC), "websocket", time.time()))
        # When the event's own run starts
        now = datetime.now(UTC)
        event = ReserveEvent(1, 1, "default", 100_000, now, now + timedelta(seconds=2), time.time())
        run = ReserveRun(event=event, loader=regulated, baseline=lambda *_: 0, recorder=None, resend_s=0.5)
        reserve_run_start(run=run)
        for _ in range(50):
            if not any(t.get_name() == "reserve-1" for t in asyncio.all_tasks()):
                break
            await asyncio.sleep(0.1)
    finally:
        await reserve_runs_stop()
        await regulation.stop()
    # Then the regulation setpoints held the reserve (0 - 0.5 x 20 kW - 100 kW), and the run sent nothing, not even a
    # release that would have dropped the regulation profile
    assert result.setpoint_w == -110_000
    assert (run.results, run.released) == ([], False)
    assert {len(agent.calls) for agent in agents.values()} == {1}


def test_an_event_that_got_no_meter_values_is_measured_as_no_response_an_hour_after_its_end(db):
    # Given 100 kW of reserve cleared for 21:00 and an event 21:05-21:25 with no meter value from anyone
    _market()
    row, _ = reserve_deployment_record(
        portfolio="default", event_id="dark", power_w=None, start=EVENT_START, end=EVENT_END, source="utility_api"
    )
    # When measured 10 minutes after its end, it waits (late data may still arrive)
    with pytest.raises(ReserveNotMeasured):
        reserve_event_measure(deployment=row, now=EVENT_END + timedelta(minutes=10))
    # When measured an hour after its end
    measured = reserve_event_measure(deployment=row, now=EVENT_END + timedelta(hours=1))
    # Then it is measured as nothing delivered: credited 0, the whole 100 kW short, no station and no reading behind it
    assert (measured.credited_w, measured.shortfall_w) == (0, 100_000)
    assert (measured.stations, measured.meter_values) == (0, 0)


@pytest.mark.django_db(transaction=True)
async def test_a_cancelled_event_stops_discharging_at_once_and_its_stored_end_moves_up(stations):
    # Given a 20-minute event running on real time (a 60-s resend: without a wake-up the run would sleep through it)
    product, _ = await sync_to_async(_market)()
    _, agents = await _charging_before_the_event(stations, 3)
    row, _ = await sync_to_async(reserve_deployment_record)(
        portfolio="default", event_id="sr-cancelled", power_w=30_000, start=EVENT_START, end=EVENT_END,
        source=SignalSource.UTILITY_API,
    )  # fmt: skip
    fleet, routes = fleet_of(3)
    clock = _fast_clock(EVENT_START, 1.0)
    event = ReserveEvent(row.pk, product.pk, "default", row.power_w, row.start, row.end, time.time())
    run = ReserveRun(
        event=event,
        loader=lambda **kw: DispatchState(fleet, routes, 0, None, kw["now"]),
        baseline=fleet_power_at,
        recorder=None,
        clock=clock,
        resend_s=60,
    )
    reserve_run_start(run=run)
    try:
        await asyncio.wait_for(run.first_sent.wait(), 10)
        # When its sender cancels it a few seconds in
        cancelled_at = datetime.fromtimestamp(clock(), UTC)
        assert await reserve_dispatch_end(deployment_id=row.pk, at=cancelled_at, reason="cancelled by the VTN")
        for _ in range(50):
            if run.released:
                break
            await asyncio.sleep(0.1)
    finally:
        await reserve_runs_stop()
    # Then the run released the cars (ClearChargingProfile the last call everywhere) within seconds, not at 21:25,
    # and the stored event now ends when it was cancelled: regulation dispatch no longer adds it
    assert run.released
    assert {agent.calls[-1][0] for agent in agents.values()} == {"ClearChargingProfile"}
    await sync_to_async(row.refresh_from_db)()
    assert row.end == max(cancelled_at, EVENT_START + timedelta(seconds=1))  # the rows' constraint: end > start
    assert row.end < EVENT_END


def _regulation_dispatched_on_another_node(portfolio: str) -> None:
    """A Dispatch row as another server process records its regulation fan-out: now, with commands."""
    now = datetime.now(UTC)
    Dispatch.objects.create(
        product=regulation_product(), portfolio=portfolio, node="other-node", signal_at=now, signal=D("0.5"),
        source="websocket", received_at=now, capacity_w=20_000, basepoint_w=0, reserve_w=100_000,
        setpoint_w=-110_000, allocated_w=-110_000, feasible=True, vehicles=2, commands=2, accepted=2, failed=0,
        compute_ms=1.0, state_age_s=0.5, recorded_at=now,
    )  # fmt: skip


async def _run_beside_regulation_on_another_node(
    stations: Any, *, regulated: str, power_w: int, seconds: float
) -> tuple[ReserveRun, dict[str, AnsweringStation]]:
    """Another server process dispatched regulation of portfolio ``regulated`` just now; an event of ``power_w`` on
    ``default`` lasting ``seconds`` then runs here to its end (5 s at most) beside two answering stations."""
    await sync_to_async(_regulation_dispatched_on_another_node)(regulated)
    fleet, routes = fleet_of(2)
    agents = {r.station_id: AnsweringStation() for r in routes}
    for sid, agent in agents.items():
        stations(sid, agent)
    now = datetime.now(UTC)
    event = ReserveEvent(1, 1, "default", power_w, now, now + timedelta(seconds=seconds), time.time())
    run = ReserveRun(
        event=event,
        loader=lambda **kw: DispatchState(fleet, routes, 0, None, kw["now"]),
        baseline=lambda *_: 0,
        recorder=None,
        resend_s=0.5,
        regulated_elsewhere=regulation_dispatched_since,
    )
    reserve_run_start(run=run)
    try:
        for _ in range(50):
            if not any(t.get_name() == "reserve-1" for t in asyncio.all_tasks()):
                break
            await asyncio.sleep(0.1)
    finally:
        await reserve_runs_stop()
    return run, agents


@pytest.mark.django_db(transaction=True)
async def test_an_event_carried_by_regulation_on_another_node_gets_no_setpoint_of_its_own(stations):
    # Given regulation of the portfolio dispatched by another server process (its setpoints carry the reserve)
    # When the event's run starts here
    run, agents = await _run_beside_regulation_on_another_node(
        stations, regulated="default", power_w=100_000, seconds=2
    )
    # Then it sent nothing, not even a release that would drop the other node's regulation profile
    assert (run.results, run.released) == ([], False)
    assert {len(agent.calls) for agent in agents.values()} == {0}


@pytest.mark.django_db(transaction=True)
async def test_an_event_whose_regulation_stopped_long_ago_is_dispatched_by_its_run(stations):
    # Given regulation of another portfolio only
    # When the event's run starts here
    run, _ = await _run_beside_regulation_on_another_node(stations, regulated="elsewhere", power_w=10_000, seconds=1)
    # Then its own setpoints went out and were released at its end
    assert run.results
    assert run.released


def test_a_later_part_of_a_utility_event_is_measured_against_the_events_first_baseline(db):
    # Given 100 kW of reserve cleared for 21:00, two cars charging at 7 kW until the event's start at 21:05 and
    # discharging at 3 kW from 10 s after it
    _market()
    chargers = [StationFactory.create(station_id=f"part-{k}") for k in (1, 2)]
    responding = EVENT_START + timedelta(seconds=10)
    _store_power(chargers, EVENT_HOUR, responding, {s.station_id: BASELINE_W for s in chargers})
    _store_power(chargers, responding, EVENT_END + timedelta(minutes=1), {s.station_id: -3_000 for s in chargers})
    # When the event's second part (21:15-21:25, a new interval of the same utility event) is recorded with the
    # event's first start as its baseline, and measured
    row, _ = reserve_deployment_record(
        portfolio="default", event_id="utility-part-2", power_w=None, start=EVENT_START + timedelta(minutes=10),
        end=EVENT_END, source=SignalSource.UTILITY_API, baseline_at=EVENT_START,
    )  # fmt: skip
    measured = reserve_event_measure(deployment=row, now=EVENT_END + timedelta(minutes=3))
    # Then its response is the 20 kW the fleet gives against what it drew before the event, not 0 against its own start
    assert measured.baseline_w == 2 * BASELINE_W
    assert measured.response_10min_w == 2 * BASELINE_W + 6_000
    assert "first start" in measured.inputs["baseline"]
