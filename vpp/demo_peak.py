"""The demo depot's peak shaving: a site meter fed with a realistic load profile (simulated, labelled), a demand
tariff, a simulated history shaved by the real planner and settled by the real settlement, and, in ``make run``, a
live meter the real controller shaves.

- **Seed** (:func:`demo_peak_seed`, from ``demo_seed``): the default depot ``depot-1`` gets the demo operator's
  stations, the tariff ``GS-3 (demo, simulated)`` ($12.00/kW facility + $9.50/kW weekday 12:00-20:00 on-peak,
  America/New_York, billing from the 1st), and an OCPP site meter: EVSE 0 of the station ``demo-depot-meter``.
  Its history, from the start of the last billing period to today, is simulated: each day the load without the
  fleet is ``markets/data/depot-load-weekday-5min.csv`` (synthetic; ``markets/data/README.md``) x ``SCALE``, with a
  day-to-day factor of +-5 % (a seeded RNG per date) and weekends at 55 %; the real planner
  (:func:`markets.peak.capacity.cap_plan`) shaves it with one car per depot station (60 kWh, 11 kW, 70 % SoC each
  morning, floor 20 %; never below the period's billed peak so far), the metered import (load + fleet) is stored as
  15-min interval readings (``source_ref`` says simulated) and the cars' power as 1-min meter values (``source =
  "simulated"``) wherever it is not zero. Where the demo's regulation history (``vpp.demo_history``) already put
  meter values at those stations, their net power is in the metered import too. The last billing period is then
  settled by :func:`markets.peak.services.peak_period_settle`: the peak-shaving money on the revenue pages.
  Idempotent: a day already simulated is not again, a settled period stays as it is.
- **Live** (:func:`depot_meter_run`, ``manage.py demo_peak``, started by ``runvpp``): an OCPP 2.1 client over a
  real WebSocket as ``demo-depot-meter`` (BootNotification, vendor "OpenV2G demo", model "Simulated meter")
  sends MeterValues for EVSE 0 every 5 s: the profile at this local time of day x ``SCALE`` plus the depot's cars'
  present power as their stations last reported it. The CSMS stores it as the depot's meter and the real-time
  controller (``vpp.peak``) shaves it; a plan is made at start (then every 15 min by beat).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import close_old_connections, transaction

from chargers.models import MeterValue, Station
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.seeding import DEMO, demo_organisation
from fleet.services.stations import stations_provision
from markets.defaults import ensure_defaults
from markets.models import DepotSite, MarketOperator, Product
from markets.peak.capacity import cap_plan
from markets.peak.models import (
    DemandCharge,
    DemandTariff,
    MeterSource,
    PeakSettlement,
    SiteMeter,
    SiteMeterReading,
)
from markets.peak.selectors import fleet_at_site, tariff_in_force
from markets.peak.services import PeakError, peak_period_settle, peak_plan_make, site_load_forecast_make
from vpp.demo import demo_credentials

LOG = logging.getLogger(__name__)
SITE_CODE = "depot-1"
METER_STATION = "demo-depot-meter"
TARIFF_NAME = "GS-3 (demo, simulated)"
PROFILE = Path(settings.BASE_DIR) / "markets" / "data" / "depot-load-weekday-5min.csv"
LABEL = "simulated: demo depot load, markets/data/depot-load-weekday-5min.csv"
SIMULATED = "simulated"
SCALE = 0.5  # the profile's 185.6 kW peak at a quarter of a van fleet's depot: one the demo's five cars can shave
WEEKEND = 0.55
CAR_WH, CAR_W, CAR_SOC, CAR_FLOOR, EFF = 60_000, 11_000, 0.70, 0.20, 0.92
PERIOD_S = 5.0
STEP = timedelta(minutes=15)


@cache
def profile_w() -> tuple[int, ...]:
    """The weekday profile's 288 five-minute means (W), from midnight local."""
    with PROFILE.open() as f:
        return tuple(int(row["import_w"]) for row in csv.DictReader(f))


def day_factor(day: date) -> float:
    """The day's scale: +-5 % from a RNG seeded by the date (the same every run), weekends at 55 %."""
    wiggle = random.Random(day.toordinal()).uniform(0.95, 1.05)
    return SCALE * wiggle * (WEEKEND if day.weekday() >= 5 else 1.0)


def base_load_w(at: datetime, zone: ZoneInfo) -> int:
    """The depot's load without the fleet at ``at``: the profile's 5-min mean there, the day's scale."""
    local = at.astimezone(zone)
    k = (local.hour * 60 + local.minute) // 5
    return round(profile_w()[k] * day_factor(local.date()))


def quarter_loads(day: date, zone: ZoneInfo) -> list[tuple[datetime, float]]:
    """(UTC start, mean W) of the day's 15-min intervals (a DST day has 92 or 100)."""
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    out, t = [], start
    while t < end:
        out.append((t, sum(base_load_w(t + timedelta(minutes=m), zone) for m in (0, 5, 10)) / 3))
        t += STEP
    return out


@dataclass(frozen=True)
class DemoPeak:
    site_id: int
    days: int
    settlement_id: int | None
    avoided: Decimal | None = None

    def __str__(self) -> str:
        money = f"last billing period settled, {self.avoided} avoided" if self.avoided is not None else "not settled"
        return f"peak shaving, {self.days} days simulated; {money}"


def _site(station_ids: Sequence[str], password: str) -> tuple[DepotSite, DemandTariff]:
    org = demo_organisation(DEMO)
    if not DepotSite.objects.filter(code=SITE_CODE).exists():  # made by a data migration; a flushed test db lacks it
        ensure_defaults(MarketOperator, DepotSite, Product)
    site = DepotSite.objects.get(code=SITE_CODE)
    if site.organisation_id is None:
        site.organisation = org
        site.save(update_fields=["organisation"])
    site.stations.add(*Station.objects.filter(station_id__in=station_ids))
    tariff = DemandTariff.objects.filter(site=site).order_by("valid_from").first()
    if tariff is None:
        tariff = DemandTariff.objects.create(site=site, name=TARIFF_NAME, valid_from=date(2020, 1, 1))
        DemandCharge.objects.create(tariff=tariff, name="facility", price_per_kw=Decimal("12.00"))
        DemandCharge.objects.create(tariff=tariff, name="on-peak", price_per_kw=Decimal("9.50"), weekdays="01234",
                                    window_start=time(12), window_end=time(20))  # fmt: skip
    stations_provision(station_ids=[METER_STATION], password=password, organisation=org, update=True)
    meter_station = Station.objects.get(station_id=METER_STATION)
    SiteMeter.objects.get_or_create(
        site=site, station=meter_station, evse_id=0, defaults={"kind": SiteMeter.Kind.OCPP}
    )  # fmt: skip
    return site, tariff


def _cars(n: int) -> list[VehicleSnapshot]:
    return [
        VehicleSnapshot(
            vehicle_id=k + 1,
            capacity_wh=CAR_WH,
            soc_wh=round(CAR_SOC * CAR_WH),
            floor_wh=round(CAR_FLOOR * CAR_WH),
            max_charge_w=CAR_W,
            max_discharge_w=CAR_W,
            charge_efficiency=EFF,
            discharge_efficiency=EFF,
        )
        for k in range(n)
    ]


def _simulate_day(
    *, site: DepotSite, stations: list[Station], day: date, zone: ZoneInfo, billed_so_far: int, spec: Any
) -> int:
    """One day shaved by the planner and stored; returns the day's highest billed metered demand (W)."""
    loads = quarter_loads(day, zone)
    start, end = loads[0][0], loads[-1][0] + STEP
    # what the demo's regulation history already did at these stations is behind the meter too
    existing = fleet_at_site(site=site, start=start, end=end, interval=STEP).net_w if stations else {}
    billed = [spec.max_charge_price_at(t) > 0 for t, _ in loads]
    plan = cap_plan(load_w=[w for _, w in loads], billed=billed, step_s=STEP.total_seconds(),
                    start_ts=start.timestamp(), vehicles=_cars(len(stations)),
                    floor_cap_w=billed_so_far)  # fmt: skip
    fleet = plan.fleet_w if stations else [0] * len(loads)
    readings, meter_values = [], []
    peak = 0
    for (t, w), f, ok in zip(loads, fleet, billed, strict=True):
        metered = round(w + f + existing.get(t, 0))
        peak = max(peak, metered) if ok else peak
        readings.append(SiteMeterReading(site=site, start=t, interval_s=900, import_w=metered,
                                         source=MeterSource.CSV, source_ref=LABEL, belief_time=end))  # fmt: skip
        if f == 0:
            continue
        each = round(f / len(stations))
        for m in range(15):
            at = t + timedelta(minutes=m)
            meter_values += [
                MeterValue(station=s, evse_id=1, timestamp=at, received_at=at, measurand="Power.Active.Export"
                           if each < 0 else "Power.Active.Import", value=abs(each), unit="W", source=SIMULATED)
                for s in stations
            ]  # fmt: skip
    with transaction.atomic():
        SiteMeterReading.objects.bulk_create(readings, batch_size=1000)
        MeterValue.objects.bulk_create(meter_values, batch_size=5000)
    return peak


def demo_peak_seed(
    *,
    now: datetime,
    station_ids: Sequence[str],
    history: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DemoPeak:
    """Set up the demo depot; with ``history``, simulate it from the last billing period's start to today and settle
    the last billing period. Idempotent (a day with simulated readings is skipped)."""
    site, _tariff = _site(station_ids, demo_credentials().station_password)
    if not history:
        return DemoPeak(site.pk, 0, None)
    found = tariff_in_force(site=site, at=now)
    assert found is not None
    spec = found[1]
    zone = spec.zone
    current_start, _ = spec.billing_period(now)
    previous_start, _ = spec.billing_period(current_start - timedelta(seconds=1))
    stations = list(site.stations.all())
    today = now.astimezone(zone).date()
    day = previous_start.astimezone(zone).date()
    days = (today - day).days
    done = {
        t.astimezone(zone).date()
        for t in SiteMeterReading.objects.filter(site=site, source_ref=LABEL, start__gte=previous_start).values_list(
            "start", flat=True
        )
    }
    billed_so_far, simulated = 0, 0
    period_of_day = previous_start
    for k in range(days):
        d = day + timedelta(days=k)
        start = datetime.combine(d, time(0), tzinfo=zone).astimezone(UTC)
        if start >= current_start and period_of_day < current_start:
            billed_so_far, period_of_day = 0, current_start  # a new billing period: nothing billed yet
        if d in done:
            billed_so_far = max(billed_so_far, _billed_peak(site, spec, start))
        else:
            peak = _simulate_day(site=site, stations=stations, day=d, zone=zone, billed_so_far=billed_so_far, spec=spec)
            billed_so_far = max(billed_so_far, peak)
            simulated += 1
        if progress is not None:
            progress(k + 1, days)
    settlement = None
    if not PeakSettlement.objects.filter(site=site, period_start=previous_start).exists() and simulated + len(done):
        try:
            settlement = peak_period_settle(site_id=site.pk, period_start=previous_start, now=now)
        except PeakError as exc:
            LOG.warning("demo depot: %s", exc)
    else:
        settlement = PeakSettlement.objects.filter(site=site, period_start=previous_start).first()
    if settlement is None:
        return DemoPeak(site.pk, simulated, None)
    return DemoPeak(site.pk, simulated, settlement.pk, settlement.avoided)


def _billed_peak(site: DepotSite, spec: Any, day_start: datetime) -> int:
    rows = SiteMeterReading.objects.filter(
        site=site, source_ref=LABEL, start__gte=day_start, start__lt=day_start + timedelta(days=1)
    ).values_list("start", "import_w")
    return max((w for t, w in rows if spec.max_charge_price_at(t) > 0), default=0)


# --- live -----------------------------------------------------------------------------------------------------------


def depot_plan(*, now: datetime) -> int | None:
    """Forecast and plan the next 24 h for the demo depot now (beat does it every 15 min); the plan's id."""
    close_old_connections()
    site = DepotSite.objects.get(code=SITE_CODE)
    aligned = now.replace(second=0, microsecond=0)
    aligned -= timedelta(minutes=aligned.minute % 15)
    try:
        site_load_forecast_make(site_id=site.pk, start=aligned, end=aligned + timedelta(days=1), now=now)
        return peak_plan_make(site_id=site.pk, start=aligned, end=aligned + timedelta(days=1), now=now).pk
    except PeakError as exc:
        LOG.warning("demo depot: %s", exc)
        return None


def depot_import_w(*, now: datetime) -> int:
    """The demo depot's import now: the load profile plus its cars' power as their stations last reported it."""
    close_old_connections()
    site = DepotSite.objects.get(code=SITE_CODE)
    found = tariff_in_force(site=site, at=now)
    zone = found[1].zone if found else ZoneInfo("America/New_York")
    fleet = 0
    for station in site.stations.all():
        latest = (
            MeterValue.objects.filter(station=station, evse_id__gt=0, timestamp__gte=now - timedelta(seconds=30),
                                      measurand__in=("Power.Active.Import", "Power.Active.Export"), phase="")
            .order_by("-timestamp", "-id").values_list("timestamp", "measurand", "value")[:2]
        )  # fmt: skip
        by_time = [(t, m, v) for t, m, v in latest if latest and t == latest[0][0]]
        fleet += sum(v if m == "Power.Active.Import" else -v for _, m, v in by_time)
    return base_load_w(now, zone) + fleet


def depot_import_w_at(now: datetime) -> int:
    return depot_import_w(now=now)


def _call(action: str, payload: dict[str, Any]) -> tuple[str, str]:
    message_id = str(uuid.uuid4())
    return message_id, json.dumps([2, message_id, action, payload])


async def depot_meter_run(*, csms_url: str, stop: asyncio.Event, period_s: float = PERIOD_S) -> None:
    """Be the depot's main meter over OCPP 2.1 until ``stop``; reconnects after a lost connection."""
    import websockets.asyncio.client

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: depot_plan(now=datetime.now(UTC)))
    password = demo_credentials().station_password
    auth = base64.b64encode(f"{METER_STATION}:{password}".encode()).decode()
    url = f"{csms_url.rstrip('/')}/{METER_STATION}"
    while not stop.is_set():
        try:
            async with websockets.asyncio.client.connect(
                url, subprotocols=[websockets.Subprotocol("ocpp2.1")],
                additional_headers={"Authorization": f"Basic {auth}"},
            ) as ws:  # fmt: skip
                await _exchange(ws, "BootNotification", {"reason": "PowerUp", "chargingStation": {
                    "vendorName": "OpenV2G demo", "model": "Simulated meter"}})  # fmt: skip
                LOG.info("demo depot meter connected to %s", url)
                while not stop.is_set():
                    now = datetime.now(UTC)
                    w = await loop.run_in_executor(None, depot_import_w_at, now)
                    await _exchange(ws, "MeterValues", {"evseId": 0, "meterValue": [{
                        "timestamp": now.isoformat().replace("+00:00", "Z"), "sampledValue": [
                            {"value": max(w, 0), "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
                            {"value": max(-w, 0), "measurand": "Power.Active.Export", "unitOfMeasure": {"unit": "W"}},
                        ]}]})  # fmt: skip
                    with _suppress_timeout():
                        await asyncio.wait_for(stop.wait(), timeout=period_s)
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            LOG.warning("demo depot meter: %s; reconnecting in 5 s", exc)
            with _suppress_timeout():
                await asyncio.wait_for(stop.wait(), timeout=5.0)


async def _exchange(ws: Any, action: str, payload: dict[str, Any]) -> Any:
    """One CALL and its answer (the CSMS's own CALLs to this meter, if any, are answered NotImplemented)."""
    message_id, text = _call(action, payload)
    await ws.send(text)
    async with asyncio.timeout(30):
        while True:
            frame = json.loads(await ws.recv())
            if frame[0] == 2:
                await ws.send(json.dumps([4, frame[1], "NotImplemented", "demo meter", {}]))
            elif frame[1] == message_id:
                if frame[0] == 4:
                    raise OSError(f"{action} refused: {frame[2]} {frame[3]}")
                return frame[2]


def _suppress_timeout() -> contextlib.suppress:
    return contextlib.suppress(TimeoutError)
