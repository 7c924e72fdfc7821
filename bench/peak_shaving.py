"""Peak shaving on a one-day depot profile: the peak the fleet actually avoids, and what it is worth.

The depot's load without the fleet is ``markets/data/depot-load-weekday-5min.csv`` (Tuesday 1 July 2025, 5-min
means; how it was made: ``bench/depot_load_profile.py``). Its history, the four Tuesdays before (the same generator
with other seeds and scales, as a utility's 15-min interval data), is uploaded through the upload service; the
real code then forecasts the day (``site_load_forecast_make``), plans it with the optimiser (``peak_plan_make``,
HiGHS), and the real-time controller (``vpp.peak.shaver.SiteShaver``, its state from ``site_state_load``) follows a
site-meter reading every minute, its commands fanned out (``chargers.fanout``) to stand-in stations whose cars do
what they are told; the cars' SoC is advanced from their power every minute. The site's and the cars' meter
readings are stored, and the billing period is settled (``peak_period_settle``) against the counterfactual.

Tariff (an assumption, of the size of US commercial demand charges): $12.00 per kW of the month's highest 15-min
demand, plus $9.50 per kW of the highest weekday 12:00-20:00 one. Fleet: ``--cars`` vans (58 kWh, 11 kW both
ways, OCPP 2.1) plugged in all day at 80 % SoC.

Printed: the peak without the fleet (metered + the fleet's discharge), with it, the forecast peak and the planned
cap, kW and money avoided per charge, the fleet's discharge energy, the plan's and the controller's time. Only one
day of the month is metered: the money is what that day's peak is worth on a bill (the day sets the month's peak).

Usage: ``python bench/peak_shaving.py [--cars 8] [--scheduler highs]``. Runs in a fresh test database (SQLite under a
temp dir, or ``test_<name>`` of DATABASE_URL), destroyed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._progress import track  # noqa: E402
from bench.depot_load_profile import OUT as PROFILE  # noqa: E402
from bench.depot_load_profile import profile  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("VPP_VAR_DIR", tempfile.mkdtemp(prefix="vpp-bench-peak-"))

DAY = datetime(2025, 7, 1, 4, 0, tzinfo=UTC)  # Tuesday 1 July 2025 00:00 EDT: the first day of a billing period
HISTORY = [(date(2025, 6, 3), 2, 0.97), (date(2025, 6, 10), 3, 1.0), (date(2025, 6, 17), 4, 1.02),
           (date(2025, 6, 24), 5, 0.99)]  # fmt: skip
CAPACITY_WH, CAR_W, EFFICIENCY = 58_000, 11_000, 0.92


def read_profile() -> list[int]:
    with PROFILE.open() as f:
        rows = list(csv.DictReader(f))
    assert datetime.fromisoformat(rows[0]["interval_start"]) == DAY, "profile file is not of the bench's day"
    return [int(r["import_w"]) for r in rows]  # 288 x 5 min


def seed(cars: int) -> Any:
    from chargers.models import Station
    from fleet.models import Fleet, Organisation, PlugSession, SocEstimate, SocSource, Vehicle
    from markets.models import DepotSite
    from markets.peak.models import DemandCharge, DemandTariff, MeterSource, SiteMeter
    from markets.peak.services import site_interval_data_receive

    org = Organisation.objects.create(name="Bench depot", slug="bench-depot")
    fleet = Fleet.objects.create(organisation=org, name="vans")
    site = DepotSite.objects.create(
        code="bench-depot", name="Bench depot", organisation=org, threshold_w=10**9, demand_charge=Decimal(0)
    )
    tariff = DemandTariff.objects.create(site=site, name="GS-3 (bench)", valid_from=date(2025, 1, 1))
    DemandCharge.objects.create(tariff=tariff, name="facility", price_per_kw=Decimal("12.00"))
    DemandCharge.objects.create(tariff=tariff, name="on-peak", price_per_kw=Decimal("9.50"), weekdays="01234",
                                window_start=dtime(12), window_end=dtime(20))  # fmt: skip
    main = Station.objects.create(station_id="bench-main", ocpp_version="2.1", channel_name="x")
    SiteMeter.objects.create(site=site, kind=SiteMeter.Kind.OCPP, station=main, evse_id=0)
    vehicles = []
    for k in range(cars):
        sid = f"bench-cs-{k + 1}"
        site.stations.add(Station.objects.create(station_id=sid, ocpp_version="2.1", channel_name="x"))
        v = Vehicle.objects.create(fleet=fleet, name=f"VAN-{k + 1}", model="e-van", usable_capacity_wh=CAPACITY_WH,
                                   ac_max_charge_w=CAR_W, ac_max_discharge_w=CAR_W, dc_max_discharge_w=CAR_W,
                                   charge_efficiency=EFFICIENCY, discharge_efficiency=EFFICIENCY)  # fmt: skip
        PlugSession.objects.create(vehicle=v, station_id=sid, evse_id=1, transaction_id=f"tx-{k}",
                                   matched_by="manual", started_at=DAY - timedelta(hours=10))  # fmt: skip
        SocEstimate.objects.create(vehicle=v, soc_wh=round(0.8 * CAPACITY_WH), source=SocSource.SEED,
                                   valid_at=DAY - timedelta(hours=1), known_at=DAY - timedelta(hours=1))  # fmt: skip
        vehicles.append((sid, v.pk))
    for day, history_seed, scale in HISTORY:  # the utility's 15-min interval data of the past Tuesdays
        five = profile(day, seed=history_seed, scale=scale)
        readings = [
            {"interval_start": five[k][0].isoformat(), "interval_minutes": 15,
             "import_w": round(sum(w for _, w in five[k : k + 3]) / 3)}
            for k in range(0, len(five), 3)
        ]  # fmt: skip
        site_interval_data_receive(site=site, body=json.dumps({"readings": readings}).encode(),
                                   source=MeterSource.JSON, filename=f"{day}.json", actor_user_id=None,
                                   actor_label="bench", now=datetime(2025, 6, 30, tzinfo=UTC))  # fmt: skip
    return site, vehicles


async def run_day(site: Any, vehicles: list[tuple[str, int]], base: list[int]) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from chargers import fanout
    from fleet.models import SocEstimate, SocSource
    from tests.vpp.stand_ins import AnsweringStation
    from vpp.peak.selectors import site_state_load
    from vpp.peak.shaver import SiteShaver

    fanout.NodeListener.ensure_started = classmethod(lambda cls: None)  # type: ignore[method-assign,assignment]
    agents = {sid: AnsweringStation() for sid, _ in vehicles}
    for sid, agent in agents.items():
        fanout.LOCAL.register(sid, agent)
    shaver = SiteShaver(site_id=site.pk)
    power = dict.fromkeys(agents, 0)
    soc = dict.fromkeys(agents, 0.8 * CAPACITY_WH)
    seen = dict.fromkeys(agents, 0)
    soc_low = 0.8 * CAPACITY_WH
    site_samples, car_rows, step_ms, commands = [], [], [], 0
    for minute in track(range(24 * 60), "controller, 1 reading/min"):
        t = DAY + timedelta(minutes=minute)
        # the server reloads every 5 s: here before every reading, with the SoC of the minute before
        shaver.install(await sync_to_async(site_state_load)(site_id=site.pk, now=t.timestamp()))
        load = base[minute // 5]
        for sid in agents:
            shaver.car_power(sid, 1, t.timestamp(), power[sid])
        started = time.perf_counter()
        await shaver.step(import_w=load + sum(power.values()), now=t.timestamp())
        step_ms.append((time.perf_counter() - started) * 1000)
        for sid, agent in agents.items():  # the cars do what they were told
            for action, payload in agent.calls[seen[sid] :]:
                commands += 1
                if action == "SetChargingProfile":
                    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
                    power[sid] = int(period["setpoint"])
                else:
                    power[sid] = 0
            seen[sid] = len(agent.calls)
            w = power[sid]
            soc[sid] += w / 60 * (EFFICIENCY if w > 0 else 1 / EFFICIENCY)
            car_rows.append((sid, t, w))
        soc_low = min(soc_low, *soc.values())
        site_samples.append({"station_id": "bench-main", "evse_id": 0, "timestamp": t.isoformat(),
                             "values": {"Power.Active.Import": load + sum(power.values())}})  # fmt: skip
        at = t + timedelta(minutes=1)  # the SoC the next reload sees (the edge agent reports it every few seconds)
        rows = [SocEstimate(vehicle_id=pk, soc_wh=round(soc[sid]), source=SocSource.METERED, valid_at=at,
                            known_at=at) for sid, pk in vehicles]  # fmt: skip
        await sync_to_async(SocEstimate.objects.bulk_create)(rows)
    for sid, agent in agents.items():
        fanout.LOCAL.unregister(sid, agent)
    return {"site_samples": site_samples, "car_rows": car_rows, "step_ms": step_ms, "commands": commands,
            "soc_min": soc_low / CAPACITY_WH, "soc_end": min(soc.values()) / CAPACITY_WH,
            "cap_end": shaver.cap_w()}  # fmt: skip


def store(day: dict[str, Any]) -> None:
    from chargers.models import MeterValue, Station
    from markets.peak.services import site_meter_telemetry_ingest

    site_meter_telemetry_ingest(readings=day["site_samples"])
    pks = dict(Station.objects.filter(station_id__startswith="bench-cs-").values_list("station_id", "pk"))
    MeterValue.objects.bulk_create(
        (MeterValue(station_id=pks[sid], evse_id=1, timestamp=t, received_at=t,
                    measurand="Power.Active.Export" if w < 0 else "Power.Active.Import", value=abs(w), unit="W",
                    source="MeterValues") for sid, t, w in day["car_rows"]),
        batch_size=5000,
    )  # fmt: skip


def bench(cars: int, scheduler: str) -> None:
    from fleet.selectors import plugged_in_snapshots
    from markets.peak.capacity import cap_plan
    from markets.peak.services import peak_period_settle, peak_plan_make, site_load_forecast_make

    base = read_profile()
    site, vehicles = seed(cars)
    now = DAY - timedelta(minutes=5)
    quarter = [sum(base[k : k + 3]) / 3 for k in range(0, 288, 3)]
    # hindsight: the lowest cap the cars could have held had the day's real load been known (the plan's own model)
    hindsight = cap_plan(load_w=quarter, billed=[True] * 96, step_s=900, start_ts=DAY.timestamp(),
                         vehicles=plugged_in_snapshots(at=now))  # fmt: skip
    t0 = time.perf_counter()
    site_load_forecast_make(site_id=site.pk, start=DAY, end=DAY + timedelta(days=1), now=now)
    t1 = time.perf_counter()
    plan = peak_plan_make(site_id=site.pk, start=DAY, end=DAY + timedelta(days=1), now=now, scheduler=scheduler)
    t2 = time.perf_counter()
    day = asyncio.run(run_day(site, vehicles, base))
    store(day)
    # readings are believed from when they were stored (this machine's clock), so the settlement is made as of now
    settlement = peak_period_settle(site_id=site.pk, period_start=DAY, now=datetime.now(UTC))
    hold_kwh = sum(max(0.0, q - plan.threshold_w) for q in quarter) / 4 / 1000 / EFFICIENCY  # from the packs
    above_kwh = cars * CAPACITY_WH * (0.8 - 0.2) / 1000  # 80 % SoC, the default mobility floor of 20 %
    room_kwh = cars * CAPACITY_WH * (1 - 0.8) / 1000  # what charging to full adds
    discharge_kwh = -sum(w for _, _, w in day["car_rows"] if w < 0) / 60 / 1000
    steps = sorted(day["step_ms"])
    kw = lambda w: f"{w / 1000:,.1f} kW"  # noqa: E731
    rows = [
        ("profile peak (5-min / 15-min)", kw(max(base)), kw(max(sum(base[k : k + 3]) / 3 for k in range(0, 288, 3)))),
        ("forecast peak (15-min)", kw(plan.forecast_peak_w), "mean of the 4 Tuesdays before"),
        ("planned cap", kw(plan.threshold_w), f"{plan.vehicles} cars, shave {kw(plan.planned_shave_w)}"),
        ("cap at the end of the day", kw(day["cap_end"]), "raised by the controller where the load beat the forecast"),
        ("best cap in hindsight", kw(hindsight.cap_w), "the real load known in advance, same model"),
        (
            "energy to hold the planned cap",
            f"{hold_kwh:,.1f} kWh",
            f"with the real load; the fleet has {above_kwh:,.1f} kWh above its floors + {room_kwh:,.1f} to charge",
        ),
    ]
    for line in settlement.lines.all():
        rows.append((f"{line.charge_name}: peak without fleet", kw(line.counterfactual_peak_w),
                     f"${line.counterfactual_amount:,} at {line.price_per_kw}/kW"))  # fmt: skip
        rows.append((f"{line.charge_name}: peak with fleet", kw(line.metered_peak_w), f"${line.metered_amount:,}"))
        rows.append((f"{line.charge_name}: avoided", kw(line.counterfactual_peak_w - line.metered_peak_w),
                     f"${line.avoided:,}"))  # fmt: skip
    rows += [
        ("demand charge avoided", f"${settlement.avoided:,}", f"of ${settlement.counterfactual_charge:,}"),
        (
            "fleet discharge",
            f"{discharge_kwh:,.1f} kWh",
            f"lowest SoC {day['soc_min']:.0%} (end {day['soc_end']:.0%}), {day['commands']} commands",
        ),
        ("forecast + plan time", f"{(t2 - t0):.2f} s", f"forecast {(t1 - t0):.2f} s, plan {(t2 - t1):.2f} s"),
        ("controller step", f"{statistics.median(steps):.1f} ms", f"p99 {steps[int(len(steps) * 0.99)]:.1f} ms"),
    ]
    print(f"{'figure':<34} {'value':>14}  detail")
    for name, value, detail in rows:
        print(f"{name:<34} {value:>14}  {detail}")
    print(f"plan: {plan.explanation}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=8)
    parser.add_argument("--scheduler", default="highs", choices=["highs", "greedy"])
    args = parser.parse_args()
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    logging.getLogger("vpp.peak").setLevel(logging.WARNING)  # one line per shaving episode is too many to read
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        bench(args.cars, args.scheduler)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
