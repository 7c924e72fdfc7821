"""The controller follows the plan: it charges the cars when the plan says so, within the cap; discharges only when
the import would exceed the cap; and raises the cap to what the cars can still hold when the load is above the
forecast (``vpp.peak.shaver``, its state from ``vpp.peak.selectors.site_state_load``, commands to stand-in stations).

The depot (hand-made figures): two cars (58 kWh, 11 kW both ways, 90 % efficiency each way, floor 20 % = 11.6 kWh)
on OCPP 2.1 stations; a plan of four 15-minute steps from 08:00 EDT with a cap of 90 kW: margin max(2 kW, 2 % of
90 kW) = 2 kW.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from chargers.models import Station
from fleet.models import SocEstimate, SocSource
from markets.models import DepotSite
from markets.peak.models import PeakPlan
from tests.fleet.factories import PlugSessionFactory
from tests.vpp.stand_ins import AnsweringStation
from vpp.peak.selectors import site_state_load
from vpp.peak.shaver import ShaveStep, SiteShaver

pytestmark = pytest.mark.django_db(transaction=True)
T0 = datetime(2025, 7, 14, 12, 0, tzinfo=UTC)
CARS = ("pl-cs-1", "pl-cs-2")


def _depot(*, soc_wh: int, load_w: list[int], fleet_w: list[int]) -> int:
    site = DepotSite.objects.create(code="pl-depot", name="Plan depot", threshold_w=500_000, demand_charge=Decimal(0))
    for sid in CARS:
        site.stations.add(Station.objects.create(station_id=sid, ocpp_version="2.1", channel_name="x"))
        session = PlugSessionFactory.create(station_id=sid, evse_id=1, started_at=T0 - timedelta(hours=2))
        SocEstimate.objects.create(vehicle=session.vehicle, soc_wh=soc_wh, source=SocSource.SEED,
                                   valid_at=T0 - timedelta(minutes=1), known_at=T0 - timedelta(minutes=1))  # fmt: skip
    PeakPlan.objects.create(site=site, start=T0, end=T0 + timedelta(hours=1), threshold_w=90_000,
                            forecast_peak_w=max(load_w), planned_shave_w=0, vehicles=2, step_s=900, load_w=load_w,
                            billed=[True] * 4, fleet_w=fleet_w, created_at=T0 - timedelta(minutes=5))  # fmt: skip
    return site.pk


async def _shaver(stations, recorder=None, **depot) -> tuple[SiteShaver, dict[str, AnsweringStation], int]:
    site_id = await sync_to_async(_depot)(**depot)
    agents = {sid: AnsweringStation() for sid in CARS}
    for sid, agent in agents.items():
        stations(sid, agent)
    shaver = SiteShaver(site_id=site_id, recorder=recorder)
    return shaver, agents, site_id


async def _step(shaver: SiteShaver, site_id: int, *, minute: int, import_w: int):
    now = (T0 + timedelta(minutes=minute)).timestamp()
    shaver.install(await sync_to_async(site_state_load)(site_id=site_id, now=now))
    return await shaver.step(import_w=import_w, now=now)


def _total(agents: dict[str, AnsweringStation]) -> tuple[str, int]:
    actions = {agent.calls[-1][0] for agent in agents.values()}
    assert len(actions) == 1
    action = actions.pop()
    if action != "SetChargingProfile":
        return action, 0
    return action, sum(
        int(a.calls[-1][1]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["setpoint"])
        for a in agents.values()
    )


async def test_the_cars_charge_as_planned_but_never_over_the_cap(stations):
    # Given a plan charging 15 kW in the first half hour, cars at 30 kWh
    shaver, agents, site_id = await _shaver(stations, soc_wh=30_000, load_w=[70_000] * 4,
                                            fleet_w=[15_000, 15_000, 0, 0])  # fmt: skip
    # When the site imports 82 kW with the cars idle: 90 - 2 - 82 = 6 kW of room
    step = await _step(shaver, site_id, minute=0, import_w=82_000)
    # Then the cars charge 6 kW, not the planned 15 kW
    assert (step.action, _total(agents)) == ("charge", ("SetChargingProfile", 6_000))
    # When the import falls to 70 kW (cars at 6 kW: base 64 kW, room 24 kW)
    for sid in CARS:
        shaver.car_power(sid, 1, (T0 + timedelta(minutes=1)).timestamp(), 3_000)
    step = await _step(shaver, site_id, minute=1, import_w=70_000)
    # Then they charge as planned, 15 kW
    assert (step.action, _total(agents)) == ("charge", ("SetChargingProfile", 15_000))
    # When the plan stops charging (step 2) and the cars charging freely (22 kW) fit under the cap: released
    for sid in CARS:
        shaver.car_power(sid, 1, (T0 + timedelta(minutes=30)).timestamp(), 7_500)
    step = await _step(shaver, site_id, minute=30, import_w=70_000)
    assert (step.action, _total(agents)) == ("release", ("ClearChargingProfile", 0))


async def test_each_step_that_commands_the_cars_goes_to_the_audit_with_why_and_nothing_else_does(stations):
    # Given the plan above (15 kW of charging in the first half hour) and a recorder of the shaver's steps
    recorded: list[tuple[int, ShaveStep]] = []
    shaver, _, site_id = await _shaver(stations, recorder=lambda *args: recorded.append(args), soc_wh=30_000,
                                       load_w=[70_000] * 4, fleet_w=[15_000, 15_000, 0, 0])  # fmt: skip
    # When the site imports 82 kW (6 kW of room), then the plan stops charging with the cars fitting under the cap
    await _step(shaver, site_id, minute=0, import_w=82_000)
    for sid in CARS:
        shaver.car_power(sid, 1, (T0 + timedelta(minutes=30)).timestamp(), 7_500)
    await _step(shaver, site_id, minute=30, import_w=70_000)
    # and, released, it reads under the cap again (nothing sent)
    await _step(shaver, site_id, minute=31, import_w=60_000)
    # Then the charge and the release were handed over, each with its site, its commands and why; the last was not
    assert [(sid, s.action, len(s.commands)) for sid, s in recorded] == [
        (site_id, "charge", 2),
        (site_id, "release", 2),
    ]
    assert recorded[0][1].setpoint_w == 6_000
    assert recorded[0][1].reason == "the plan charges 15000 W now; the room under the cap 90000 W is 6000 W"
    assert "holds with every car charging freely" in recorded[1][1].reason


async def test_the_cars_discharge_only_when_the_import_would_exceed_the_cap(stations):
    # Given a plan that discharges 10 kW at every step, cars at 50 kWh, the forecast at 95 kW
    shaver, agents, site_id = await _shaver(stations, soc_wh=50_000, load_w=[95_000] * 4,
                                            fleet_w=[-10_000] * 4)  # fmt: skip
    # When the site imports 87 kW (under 90 - 2): nothing is asked
    step = await _step(shaver, site_id, minute=0, import_w=87_000)
    assert step.action == "under"
    assert not any(a.calls for a in agents.values())
    # When it imports 94 kW: the cars give 90 - 2 - 94 = -6 kW
    step = await _step(shaver, site_id, minute=1, import_w=94_000)
    assert (step.action, step.threshold_w, _total(agents)) == ("shave", 90_000, ("SetChargingProfile", -6_000))


async def test_a_load_above_the_forecast_raises_the_cap_to_what_the_cars_can_still_hold(stations):
    # Given cars at 14 kWh (2 x 2.4 = 4.8 kWh above their floors) and a forecast of 95 kW for the hour
    shaver, agents, site_id = await _shaver(stations, soc_wh=14_000, load_w=[95_000] * 4, fleet_w=[0] * 4)
    # When the site imports 110 kW at 08:00 with the cars idle
    step = await _step(shaver, site_id, minute=0, import_w=110_000)
    # Then holding C for the hour (this quarter at 110 kW, then 95 kW) needs 0.25 x (110 - C + 3 x (95 - C)) kWh
    # from the grid = 4.8 x 0.9 = 4.32 kWh: 395 - 4C = 17.28, C = 94.43 kW; the cap becomes C + the margin and
    # the cars give 94.43 - 110 = -15.57 kW (not the -22 kW that holding 90 kW asks, emptying them in 13 minutes)
    assert 96_430 <= step.threshold_w <= 96_440
    action, total = _total(agents)
    assert action == "SetChargingProfile"
    assert -15_570 <= total <= -15_560
    # When at 08:20 the site imports 93 kW with the cars idle: under the raised cap, the cars charge all the room
    # it leaves (the plan's schedule is stale; the raised cap counts on the energy) and no more
    for sid in CARS:
        shaver.car_power(sid, 1, (T0 + timedelta(minutes=20)).timestamp(), 0)
    step = await _step(shaver, site_id, minute=20, import_w=93_000)
    assert step.threshold_w == shaver.raised_w
    assert (step.action, _total(agents)) == ("charge", ("SetChargingProfile", step.threshold_w - 2_000 - 93_000))


async def test_a_demand_interval_that_closed_over_the_cap_raises_it_to_its_mean(stations):
    # Given cars at 50 kWh that are not answering their commands (each reading finds them idle)
    shaver, _agents, site_id = await _shaver(stations, soc_wh=50_000, load_w=[80_000] * 4, fleet_w=[0] * 4)
    # When the site imports 100 kW every minute of 08:00-08:15 (the cars' power read as 0 each time)
    for minute in range(16):
        for sid in CARS:
            shaver.car_power(sid, 1, (T0 + timedelta(minutes=minute)).timestamp(), 0)
        step = await _step(shaver, site_id, minute=minute, import_w=100_000 if minute < 15 else 80_000)
    # Then the first quarter-hour is billed at 100 kW already: the cap is 100 kW, and 80 kW asks nothing
    assert shaver.cap_w() == 100_000
    assert step.setpoint_w is None or step.setpoint_w >= 0
