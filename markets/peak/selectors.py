"""Reads for peak shaving: a site's tariff, its demand per interval (site meter) and the fleet's power there, the
plan in force, and what a user may see.

Site demand per demand interval comes from uploaded interval data (the utility's revenue meter: what the bill is
computed from) where there is some for the interval, else from the instantaneous samples of an OCPP / Modbus site
meter, integrated as ``markets.regulation.metering`` integrates power (a sample holds at most ``SAMPLE_MAX_HOLD_S``).
An interval with neither is missing (not zero).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.db.models import QuerySet

from fleet.selectors import is_operator, organisations_for
from markets.models import DepotSite
from markets.peak.models import DemandTariff, MeterSource, PeakPlan, PeakSettlement, SiteMeter, SiteMeterReading
from markets.peak.tariff import ChargeSpec, TariffSpec, peak_so_far
from markets.regulation.metering import interval_energy_wh
from markets.regulation.selectors import charge_point_power
from markets.selectors import latest_site_load

SAMPLE_MAX_HOLD_S = 60.0  # a site meter reporting every few seconds; past a minute its value is unknown
INTERVAL_SOURCES = (MeterSource.CSV, MeterSource.JSON)


def digest(ids: Iterable[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def tariff_in_force(*, site: DepotSite, at: datetime) -> tuple[DemandTariff, TariffSpec] | None:
    """The site's tariff for the billing period containing ``at`` (newest ``valid_from`` on or before it)."""
    for tariff in DemandTariff.objects.filter(site=site).prefetch_related("charges").order_by("-valid_from"):
        spec = tariff_spec(tariff)
        start, _ = spec.billing_period(at)
        if tariff.valid_from <= start.astimezone(spec.zone).date():
            return tariff, spec
    return None


def tariff_spec(tariff: DemandTariff) -> TariffSpec:
    charges = tuple(
        ChargeSpec(c.pk, c.name, c.price_per_kw, c.weekdays, c.window_start, c.window_end) for c in tariff.charges.all()
    )
    return TariffSpec(tariff.timezone, tariff.demand_interval_minutes, tariff.billing_day, charges, tariff.currency)


@dataclass
class SiteDemand:
    """Mean import per interval start (W; missing intervals absent) and the readings behind it."""

    demand_w: dict[datetime, int] = field(default_factory=dict)
    reading_ids: list[int] = field(default_factory=list)


def site_demand(
    *, site: DepotSite, start: datetime, end: datetime, interval: timedelta, known_at: datetime
) -> SiteDemand:
    out = SiteDemand()
    rows = SiteMeterReading.objects.filter(
        site=site, start__gte=start - timedelta(seconds=SAMPLE_MAX_HOLD_S), start__lt=end, belief_time__lte=known_at
    ).order_by("start", "id")
    newest: dict[datetime, tuple[datetime, int, int]] = {}  # interval data: start -> (belief, W, id)
    samples: dict[float, tuple[int, int]] = {}  # instantaneous: t -> (W, id), first received wins
    for r in rows.values_list("id", "start", "interval_s", "import_w", "source", "belief_time"):
        pk, t, interval_s, w, source, belief = r
        if interval_s and source in INTERVAL_SOURCES:
            usable = interval_s == interval.total_seconds() and start <= t < end
            if usable and (t not in newest or belief > newest[t][0]):
                newest[t] = (belief, w, pk)
        elif not interval_s:
            samples.setdefault(t.timestamp(), (w, pk))
    starts = []
    t = start
    while t < end:
        starts.append(t)
        t += interval
    if samples:
        times = np.array(sorted(samples), dtype=float)
        power = np.array([samples[x][0] for x in times], dtype=float)
        edges = np.array([s.timestamp() for s in starts] + [end.timestamp()])
        imp, exp = interval_energy_wh(times, power, edges, max_hold_s=SAMPLE_MAX_HOLD_S)
        covered = _covered_s(times, edges, SAMPLE_MAX_HOLD_S)
        used = [samples[x][1] for x in times if x < end.timestamp()]
        for k, s in enumerate(starts):
            if s in newest:
                continue
            length = edges[k + 1] - edges[k]
            if covered[k] >= 0.9 * length:  # a sample gap longer than a tenth of the interval: unknown demand
                out.demand_w[s] = round((int(imp[k]) - int(exp[k])) * 3600 / length)
        out.reading_ids += used
    for s, (_, w, pk) in newest.items():
        out.demand_w[s] = w
        out.reading_ids.append(pk)
    out.reading_ids.sort()
    return out


def _covered_s(times: np.ndarray, edges: np.ndarray, hold: float) -> np.ndarray:
    """Seconds of each interval covered by a sample in force."""
    nxt = np.append(times[1:], np.inf)
    seg_end = np.minimum(nxt, times + hold)
    out = np.zeros(len(edges) - 1)
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        out[k] = np.clip(np.minimum(seg_end, hi) - np.maximum(times, lo), 0.0, None).sum()
    return out


@dataclass
class FleetAtSite:
    """The fleet's charge points behind the site meter, per interval start: mean discharge and net power (W)."""

    discharge_w: dict[datetime, int] = field(default_factory=dict)
    net_w: dict[datetime, int] = field(default_factory=dict)
    meter_ids: list[int] = field(default_factory=list)


def fleet_at_site(*, site: DepotSite, start: datetime, end: datetime, interval: timedelta) -> FleetAtSite:
    """Mean discharge / net power of the charge points (EVSE > 0) of the site's stations per interval."""
    out = FleetAtSite()
    station_pks = list(site.stations.values_list("pk", flat=True))
    starts, t = [], start
    while t < end:
        starts.append(t)
        t += interval
    for s in starts:
        out.discharge_w[s] = 0
        out.net_w[s] = 0
    if not station_pks or not starts:
        return out
    edges = np.array([s.timestamp() for s in starts] + [end.timestamp()])
    meters = {(m.station_id, m.evse_id) for m in SiteMeter.objects.filter(site=site, station__isnull=False)}
    for series in charge_point_power(start=start, end=end, stations=station_pks):
        if series.evse_id == 0 or (series.station_pk, series.evse_id) in meters:
            continue  # the site meter itself, not a car
        imp, exp = interval_energy_wh(series.times_s, series.values, edges, max_hold_s=SAMPLE_MAX_HOLD_S)
        for k, s in enumerate(starts):
            length = edges[k + 1] - edges[k]
            out.discharge_w[s] += round(int(exp[k]) * 3600 / length)
            out.net_w[s] += round((int(imp[k]) - int(exp[k])) * 3600 / length)
        out.meter_ids += series.meter_ids
    out.meter_ids.sort()
    return out


def plan_in_force(*, site_id: int, at: datetime) -> PeakPlan | None:
    return PeakPlan.objects.filter(site_id=site_id, start__lte=at, end__gt=at).order_by("-created_at", "-id").first()


def site_meter_map() -> dict[tuple[str, int], tuple[int, int, str]]:
    """(station id, EVSE id) -> (site id, meter id, source) of every active OCPP / Modbus site meter."""
    return {
        (station_id, evse_id): (site_id, pk, MeterSource.MODBUS if kind == SiteMeter.Kind.MODBUS else MeterSource.OCPP)
        for pk, site_id, kind, station_id, evse_id in SiteMeter.objects.filter(
            active=True, station__isnull=False
        ).values_list("pk", "site_id", "kind", "station__station_id", "evse_id")
    }


def billed_peak_so_far(*, site: DepotSite, spec: TariffSpec, start: datetime, now: datetime) -> int:
    """The highest demand (W) metered in the billing period containing ``start`` before it (known at ``now``), in any
    charge's window: shaving below it avoids nothing this period."""
    period_start, _ = spec.billing_period(start)
    until = min(start, now)
    if until <= period_start:
        return 0
    demand = site_demand(site=site, start=period_start, end=until, interval=spec.interval, known_at=now)
    return peak_so_far(spec, demand.demand_w.items(), at=until)


@dataclass(frozen=True)
class PeakInputs:
    """What the optimiser plans a site's peak shaving with: load without the fleet per step (-inf where no charge
    bills the interval: shaving there avoids nothing), the threshold below which shaving is worth nothing (the
    period's billed peak so far) and the most a kW of peak costs over the horizon (the tariff's currency)."""

    site_load_w: list[float]
    threshold_w: int
    price_per_w: Decimal


def tariff_peak_inputs(
    *, site: DepotSite, start: datetime, step: timedelta, steps: int, now: datetime
) -> PeakInputs | None:
    """Peak-shaving inputs from the site's tariff and load forecast; None without a tariff or any load belief (the
    caller falls back to the site's configured threshold and charge). A step without a forecast is planned as the
    worst forecast one."""
    found = tariff_in_force(site=site, at=start)
    if found is None:
        return None
    _, spec = found
    loads = latest_site_load(site=site, start=start, end=start + steps * step, known_at=now)
    if not loads:
        return None
    fill = float(max(loads.values()))
    starts = [start + t * step for t in range(steps)]
    prices = [spec.max_charge_price_at(t) for t in starts]
    return PeakInputs(
        site_load_w=[
            float(loads.get(t, fill)) if price > 0 else -math.inf for t, price in zip(starts, prices, strict=True)
        ],
        threshold_w=billed_peak_so_far(site=site, spec=spec, start=start, now=now),
        price_per_w=max(prices, default=Decimal(0)) / Decimal(1000),
    )


def sites_for(
    user: Any, *, organisation_id: int | None = None, roles: Iterable[str] | None = None
) -> QuerySet[DepotSite]:
    """Depot sites of the user's organisations (where the user holds one of ``roles``; any role when None; an
    operator: all, unassigned ones too); narrowed to one organisation for an API key limited to it."""
    sites = DepotSite.objects.all()
    if not is_operator(user):
        sites = sites.filter(organisation__in=organisations_for(user, roles=roles))
    if organisation_id is not None:
        sites = sites.filter(organisation_id=organisation_id)
    return sites


def peak_settlements_for(user: Any) -> QuerySet[PeakSettlement]:
    return PeakSettlement.objects.filter(site__in=sites_for(user)).prefetch_related("lines")
