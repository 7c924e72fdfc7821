"""Peak shaving end to end: tariff -> forecast -> plan -> real-time dispatch -> measurement -> settlement.

The depot (hand-made figures): a base load of 60 kW on Monday mornings 08:00-12:00 EDT with a half-hour peak at
10:00. Its history (Monday 30 June, uploaded interval data) peaked at 80 kW; on Monday 14 July the real peak is
95.04 kW, higher than forecast. Three cars (11 kW discharge each) are plugged in at the depot's stations. Tariff:
$12.34 per kW of the month's highest 15-minute demand.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from chargers.models import MeterValue, Station
from fleet.models import SocEstimate, SocSource
from markets.models import DepotSite
from markets.peak.interval_data import interval_data_parse_json
from markets.peak.models import DemandCharge, DemandTariff, MeterSource, SiteMeter
from markets.peak.services import (
    peak_period_settle,
    peak_plan_make,
    site_interval_data_upload,
    site_load_forecast_make,
    site_meter_telemetry_ingest,
)
from tests.fleet.factories import PlugSessionFactory
from tests.vpp.stand_ins import AnsweringStation
from vpp.peak.selectors import site_state_load
from vpp.peak.shaver import PEAK_PROFILE_ID, PEAK_STACK_LEVEL, SiteShaver

pytestmark = pytest.mark.django_db(transaction=True)

HISTORY_DAY = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)  # Monday 08:00 EDT
DAY = datetime(2025, 7, 14, 12, 0, tzinfo=UTC)  # Monday 08:00 EDT, two weeks later
CARS = ("depot-cs-1", "depot-cs-2", "depot-cs-3")


def _base_w(start: datetime, minute: int, peak_w: int) -> int:
    return peak_w if 120 <= minute < 150 else 60_000  # 10:00-10:30 local


def _depot() -> DepotSite:
    site = DepotSite.objects.create(code="depot-e2e", name="E2E depot", threshold_w=500_000, demand_charge=Decimal(0))
    tariff = DemandTariff.objects.create(
        site=site, name="GS-2", timezone="America/New_York", valid_from=date(2025, 1, 1)
    )
    DemandCharge.objects.create(tariff=tariff, name="facility", price_per_kw=Decimal("12.34"))
    main = Station.objects.create(station_id="depot-main", ocpp_version="2.1", channel_name="x")
    SiteMeter.objects.create(site=site, kind=SiteMeter.Kind.OCPP, station=main, evse_id=0)
    for sid in CARS:
        station = Station.objects.create(station_id=sid, ocpp_version="2.1", channel_name="x")
        site.stations.add(station)
        session = PlugSessionFactory.create(station_id=sid, evse_id=1, started_at=DAY - timedelta(hours=10))
        vehicle = session.vehicle
        SocEstimate.objects.create(
            vehicle=vehicle,
            soc_wh=52_200,
            source=SocSource.SEED,
            valid_at=DAY - timedelta(hours=1),
            known_at=DAY - timedelta(hours=1),
        )  # fmt: skip  90 % of 58 kWh
    return site


async def test_the_fleet_shaves_a_peak_higher_than_forecast_and_the_avoided_charge_settles_to_the_cent(stations):
    from asgiref.sync import sync_to_async

    site = await sync_to_async(_depot)()
    # Given the history as uploaded interval data (the utility's 15-min CSV/JSON): 60 kW, 80 kW at 10:00-10:30
    history = {
        "readings": [
            {"interval_start": (HISTORY_DAY + timedelta(minutes=15 * k)).isoformat(), "interval_minutes": 15,
             "import_w": 80_000 if 8 <= k < 10 else 60_000}
            for k in range(16)
        ]
    }  # fmt: skip
    points = interval_data_parse_json(history)
    await sync_to_async(site_interval_data_upload)(
        site=site, points=points, source=MeterSource.JSON, uploader="test", belief_time=HISTORY_DAY + timedelta(days=1)
    )

    # When the forecast and the plan are made at 07:55 on the day
    now = DAY - timedelta(minutes=5)
    made = await sync_to_async(site_load_forecast_make)(
        site_id=site.pk, start=DAY, end=DAY + timedelta(hours=4), now=now
    )
    plan = await sync_to_async(peak_plan_make)(site_id=site.pk, start=DAY, end=DAY + timedelta(hours=4), now=now)
    # Then 16 intervals are forecast (same Monday profile) and the cap is the forecast peak minus the three cars'
    # discharge: 80 - 3 x 11 = 47 kW
    assert made == 16
    assert (plan.forecast_peak_w, plan.threshold_w, plan.vehicles) == (80_000, 47_000, 3)

    # When the day runs minute by minute with the real load (95.04 kW peak) and the controller follows the meter
    agents = {sid: AnsweringStation() for sid in CARS}
    for sid, agent in agents.items():
        stations(sid, agent)
    shaver = SiteShaver(site_id=site.pk)
    fleet_w = dict.fromkeys(CARS, 0)
    site_samples, car_rows = [], []
    for minute in range(240):
        t = DAY + timedelta(minutes=minute)
        state = await sync_to_async(site_state_load)(site_id=site.pk, now=DAY.timestamp())
        state.loaded_at = t.timestamp()
        shaver.install(state)
        base = _base_w(DAY, minute, 95_040)
        for sid in CARS:
            shaver.car_power(sid, 1, t.timestamp(), fleet_w[sid])
        await shaver.step(import_w=base + sum(fleet_w.values()), now=t.timestamp())
        for sid, agent in agents.items():
            if agent.calls:
                _, payload = agent.calls[-1]
                period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
                fleet_w[sid] = int(period["setpoint"])
        # the meters after the cars followed: the site's import and each car's power (1-min readings)
        site_samples.append({"station_id": "depot-main", "evse_id": 0, "timestamp": t.isoformat(),
                             "values": {"Power.Active.Import": base + sum(fleet_w.values())}})  # fmt: skip
        car_rows += [(sid, t, fleet_w[sid]) for sid in CARS]
    # Then every command is the peak profile under regulation's stack level, and the cars end at full discharge
    _, payload = agents["depot-cs-1"].calls[-1]
    assert (payload["chargingProfile"]["id"], payload["chargingProfile"]["stackLevel"]) == (
        PEAK_PROFILE_ID,
        PEAK_STACK_LEVEL,
    )
    assert payload["chargingProfile"]["validTo"]

    def _store() -> None:
        site_meter_telemetry_ingest(readings=site_samples)
        pks = dict(Station.objects.filter(station_id__in=CARS).values_list("station_id", "pk"))
        MeterValue.objects.bulk_create(
            MeterValue(
                station_id=pks[sid], evse_id=1, timestamp=t, received_at=t,
                measurand="Power.Active.Export" if w < 0 else "Power.Active.Import", value=abs(w), unit="W",
                source="MeterValues",
            )
            for sid, t, w in car_rows
        )  # fmt: skip

    await sync_to_async(_store)()
    settlement = await sync_to_async(peak_period_settle)(site_id=site.pk, period_start=DAY, now=timezone.now())
    line = await settlement.lines.aget()
    # Then, by hand: the cars hold 45 kW (47 - the 2 kW margin) discharging 15 kW outside the peak; at 10:00 the
    # real load (95.04 kW) needs 50.04 kW but three cars give 33 kW: the site imports 62.04 kW, over the cap by
    # what the fleet could not give. Without the fleet (metered + discharge) the peak would have been 95.04 kW.
    assert (line.metered_peak_w, line.counterfactual_peak_w) == (62_040, 95_040)
    # metered 62.04 kW x $12.34 = $765.5736 -> $765.57; without the fleet 95.04 x 12.34 = $1,172.7936 -> $1,172.79
    assert (settlement.metered_charge, settlement.counterfactual_charge, settlement.avoided) == (
        Decimal("765.57"), Decimal("1172.79"), Decimal("407.22"),
    )  # fmt: skip
    # and the audit trail: the day's 16 metered intervals of July's 31 x 96, its 240 site and 720 car readings
    assert (settlement.intervals_metered, settlement.intervals_expected) == (16, 31 * 96)
    assert (settlement.site_readings, settlement.fleet_readings) == (240, 720)
