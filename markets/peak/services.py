"""Peak shaving writes: site-meter readings (OCPP / Modbus telemetry, CSV / JSON interval data), the load forecast,
the plan (the import cap the fleet can hold the site to) and the settlement of the demand charge avoided."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet.numerics.snapshot import VehicleSnapshot
from fleet.selectors import plugged_in_snapshots, site_vehicles
from markets.models import DepotSite, SiteLoadPoint, Source
from markets.peak.capacity import CapPlan, Pack, cap_plan, holdable_cap
from markets.peak.forecast import LoadForecaster, SameTimeOfWeek
from markets.peak.interval_data import MAX_UPLOAD_ERRORS, IntervalDataError, PeakError, Point, interval_data_parse
from markets.peak.models import (
    MeterSource,
    PeakPlan,
    PeakSettlement,
    PeakSettlementLine,
    SiteDataUpload,
    SiteMeterReading,
)
from markets.peak.selectors import (
    billed_peak_so_far,
    digest,
    fleet_at_site,
    site_demand,
    site_meter_map,
    tariff_in_force,
)
from markets.peak.settlement import IntervalDemand, settle_peak_period
from markets.selectors import latest_site_load

LOG = logging.getLogger(__name__)
POWER_IMPORT, POWER_EXPORT = "Power.Active.Import", "Power.Active.Export"


@dataclass(frozen=True, slots=True)
class RecordResult:
    read: int
    created: int
    unchanged: int


# --- readings ----------------------------------------------------------------------------------------------------


def site_readings_record(
    *, site_id: int, points: Sequence[Point], source: str, source_ref: str, belief_time: datetime | None = None
) -> RecordResult:
    """Store readings known at ``belief_time`` (now). A point equal to the newest belief already stored for its
    start, interval and source is not stored again (a re-upload changes nothing); a different value is a new belief
    (a corrected upload), the old one is kept."""
    belief = belief_time or timezone.now()
    if not points:
        return RecordResult(0, 0, 0)
    starts = [p[0] for p in points]
    newest: dict[tuple[datetime, int], tuple[datetime, int]] = {}
    for start, interval_s, w, b in SiteMeterReading.objects.filter(
        site_id=site_id, source=source, start__gte=min(starts), start__lte=max(starts)
    ).values_list("start", "interval_s", "import_w", "belief_time"):
        if (start, interval_s) not in newest or b > newest[(start, interval_s)][0]:
            newest[(start, interval_s)] = (b, w)
    rows = [
        SiteMeterReading(
            site_id=site_id, start=s, interval_s=i, import_w=w, source=source, source_ref=source_ref, belief_time=belief
        )
        for s, i, w in points
        if newest.get((s, i), (None, None))[1] != w
    ]
    with transaction.atomic():
        SiteMeterReading.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return RecordResult(len(points), len(rows), len(points) - len(rows))


def site_interval_data_upload(
    *, site: DepotSite, points: Sequence[Point], source: str, uploader: str, belief_time: datetime | None = None
) -> RecordResult:
    """Store parsed interval data as readings of ``source`` (csv / json), ``source_ref`` naming the uploader."""
    if source not in (MeterSource.CSV, MeterSource.JSON):
        raise PeakError(f"unknown interval data source {source!r}")
    result = site_readings_record(
        site_id=site.pk, points=points, source=source, source_ref=uploader[:200], belief_time=belief_time
    )
    LOG.info("site %s: %d interval readings uploaded by %s, %d new", site.code, result.read, uploader, result.created)
    return result


def site_interval_data_receive(
    *,
    site: DepotSite,
    body: bytes,
    source: str,
    filename: str,
    actor_user_id: int | None,
    actor_label: str,
    now: datetime | None = None,
) -> tuple[SiteDataUpload, RecordResult]:
    """An upload of interval data for ``site`` (API, command line): parsed all or nothing, stored, audited.

    A refused upload is recorded (``SiteDataUpload``, outcome ``refused``, its errors) before
    :class:`IntervalDataError` is raised; an accepted one is recorded in the same transaction as its readings (no
    acknowledgement without storage), and the readings name it in ``source_ref``."""
    received = now or timezone.now()
    audit = {
        "site": site,
        "user_id": actor_user_id,
        "actor_label": actor_label[:150],
        "source": source,
        "filename": filename[:200],
        "size_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "received_at": received,
    }
    try:
        points = interval_data_parse(body, source=source)
    except IntervalDataError as exc:
        SiteDataUpload.objects.create(
            **audit,
            outcome=SiteDataUpload.Outcome.REFUSED,
            errors=[list(e) for e in exc.errors[:MAX_UPLOAD_ERRORS]],
        )
        LOG.info("site %s: interval data from %s refused: %s", site.code, actor_label, exc)
        raise
    with transaction.atomic():
        upload = SiteDataUpload.objects.create(**audit, outcome=SiteDataUpload.Outcome.ACCEPTED, readings=len(points))
        result = site_interval_data_upload(
            site=site,
            points=points,
            source=source,
            uploader=f"upload {upload.pk} by {actor_label}",
            belief_time=received,
        )
        upload.created = result.created
        upload.save(update_fields=["created"])
    return upload, result


def site_meter_telemetry_ingest(*, readings: Iterable[dict[str, Any]]) -> int:
    """Store the power readings of OCPP / Modbus site meters (``chargers.telemetry`` updates as dicts): net import =
    Power.Active.Import - Power.Active.Export (phase totals if only phases came). Returns how many were stored."""
    meters = site_meter_map()
    by_site: dict[tuple[int, str, str], list[Point]] = {}
    for r in readings:
        found = meters.get((str(r.get("station_id")), int(r.get("evse_id") or 0)))
        if found is None:
            continue
        w = net_import_w(r.get("values") or {})
        if w is None:
            continue
        site_id, _, source = found
        ref = f"{r['station_id']}/{int(r.get('evse_id') or 0)}"
        by_site.setdefault((site_id, source, ref), []).append((datetime.fromisoformat(str(r["timestamp"])), 0, w))
    stored = 0
    for (site_id, source, ref), points in by_site.items():
        unique = list({p[0]: p for p in points}.values())
        stored += site_readings_record(site_id=site_id, points=unique, source=source, source_ref=ref).created
    return stored


def net_import_w(values: dict[str, int]) -> int | None:
    """Import - export (W) from a reading's values keyed ``measurand[.phase]``; None without a power measurand."""
    total: dict[str, int | None] = {}
    for measurand in (POWER_IMPORT, POWER_EXPORT):
        if measurand in values:
            total[measurand] = int(values[measurand])
        else:
            phases = [int(v) for k, v in values.items() if k.startswith(measurand + ".")]
            total[measurand] = sum(phases) if phases else None
    if total[POWER_IMPORT] is None and total[POWER_EXPORT] is None:
        return None
    return (total[POWER_IMPORT] or 0) - (total[POWER_EXPORT] or 0)


# --- forecast ----------------------------------------------------------------------------------------------------


def site_load_forecast_make(
    *,
    site_id: int,
    start: datetime,
    end: datetime,
    now: datetime,
    forecaster: LoadForecaster | None = None,
    history_days: int = 35,
) -> int:
    """Forecast the site's load without the fleet for ``[start, end)`` from its metered history (metered import
    minus the fleet's net power at the site, per demand interval) and store it as ``SiteLoadPoint`` beliefs
    (source ``forecast``, known ``now``), which planning reads. Returns the intervals forecast."""
    site = DepotSite.objects.get(pk=site_id)
    found = tariff_in_force(site=site, at=start)
    interval = found[1].interval if found else timedelta(minutes=15)
    model: LoadForecaster = forecaster or SameTimeOfWeek()
    h0 = now - timedelta(days=history_days)
    h0 = h0.replace(second=0, microsecond=0) - timedelta(minutes=h0.minute % int(interval.total_seconds() // 60))
    metered = site_demand(site=site, start=h0, end=now, interval=interval, known_at=now)
    fleet = fleet_at_site(site=site, start=h0, end=now, interval=interval)
    history = {t: float(w - fleet.net_w.get(t, 0)) for t, w in metered.demand_w.items()}
    starts = []
    t = start
    while t < end:
        starts.append(t)
        t += interval
    values = model.forecast(history, starts)
    rows = [
        SiteLoadPoint(
            site=site,
            interval_start=s,
            interval_minutes=int(interval.total_seconds() // 60),
            load_w=round(v),
            source=Source.FORECAST,
            source_ref=model.name[:200],
            belief_time=now,
        )
        for s, v in zip(starts, values, strict=True)
        if v is not None
    ]
    SiteLoadPoint.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


# --- plan --------------------------------------------------------------------------------------------------------


def peak_plan_make(
    *, site_id: int, start: datetime, end: datetime, now: datetime, scheduler: str = "highs"
) -> PeakPlan:
    """Plan ``[start, end)``: the lowest cap the cars plugged in at the site's stations can hold the forecast's
    billed steps to with the energy they have and can charge under the cap (floors, capacities, departure needs;
    ``markets.peak.capacity``), and the fleet power per step that holds it (the charging schedule real-time dispatch
    follows). Never below the billing period's metered peak so far (shaving under what the bill already holds avoids
    nothing and only wears the packs). ``scheduler``: ``highs`` (per car, exact) or ``greedy`` (the fleet as one
    pack: an optimistic cap, no schedule)."""
    site = DepotSite.objects.get(pk=site_id)
    found = tariff_in_force(site=site, at=start)
    if found is None:
        raise PeakError(f"site {site.code} has no demand-charge tariff for {start:%Y-%m-%d}")
    _, spec = found
    step = spec.interval
    steps = max(1, math.ceil((end - start) / step))
    loads = latest_site_load(site=site, start=start, end=start + steps * step, known_at=now)
    if not loads:
        raise PeakError(f"site {site.code} has no load forecast for {start:%Y-%m-%d %H:%M}; make one first")
    fill = max(loads.values())  # an interval without a forecast is planned as the worst one
    priced = [spec.max_charge_price_at(start + t * step) > 0 for t in range(steps)]
    forecast = [float(loads.get(start + t * step, fill)) for t in range(steps)]
    billed = billed_peak_so_far(site=site, spec=spec, start=start, now=now)
    price = max((spec.max_charge_price_at(start + t * step) for t in range(steps)), default=Decimal(0))
    stations = set(site.stations.values_list("station_id", flat=True))
    own = site_vehicles(organisation_id=site.organisation_id)
    vehicles = [v for v in plugged_in_snapshots(at=now, vehicles=own) if v.station_id in stations]
    if scheduler == "greedy":
        pack = fleet_pack(vehicles)
        hours = [step.total_seconds() / 3600.0] * steps
        cap = max(billed, holdable_cap(load_w=forecast, billed=priced, hours=hours, pack=pack))
        found_plan = CapPlan(cap, [], 0.0, 0.0, "greedy, one pack")
    else:
        found_plan = cap_plan(
            load_w=forecast, billed=priced, step_s=step.total_seconds(), start_ts=start.timestamp(),
            vehicles=vehicles, floor_cap_w=billed,
        )  # fmt: skip
    threshold = max(billed, found_plan.cap_w)
    forecast_peak = round(max(f for f, ok in zip(forecast, priced, strict=True) if ok) if any(priced) else fill)
    shave = [max(0, -w) for w in found_plan.fleet_w]
    plan = PeakPlan.objects.create(
        site=site,
        start=start,
        end=start + steps * step,
        threshold_w=max(threshold, 0),
        forecast_peak_w=forecast_peak,
        billed_peak_w=billed,
        planned_shave_w=max(shave, default=max(0, forecast_peak - threshold)),
        step_s=int(step.total_seconds()),
        load_w=[round(f) for f in forecast],
        billed=priced,
        fleet_w=found_plan.fleet_w,
        vehicles=len(vehicles),
        forecast_ref=", ".join(sorted({Source.FORECAST})),
        explanation=(
            f"{scheduler} ({found_plan.status}): {len(vehicles)} cars at {len(stations)} stations, "
            f"{steps} x {int(step.total_seconds() // 60)} min; cap {threshold} W, forecast peak {forecast_peak} W; "
            f"charge {found_plan.charge_wh / 1000:.1f} kWh, discharge {found_plan.discharge_wh / 1000:.1f} kWh; "
            f"demand charge {price}/kW; billed peak so far {billed} W; expected avoided "
            f"{price * Decimal(max(0, forecast_peak - threshold)) / Decimal(1000):.2f}."
        ),
        created_at=now,
    )
    LOG.info(
        "site %s: peak plan %s..%s cap %d W (%d cars)", site.code, plan.start, plan.end, plan.threshold_w, len(vehicles)
    )
    return plan


def fleet_pack(vehicles: Sequence[VehicleSnapshot]) -> Pack:
    """The cars as one pack for :func:`markets.peak.capacity.holdable_cap`: a car leaving keeps its departure need
    (or its floor), a car under its floor gives nothing."""
    if not vehicles:
        return Pack(0.0, 0.0, 0.0, 0.0, 0.0)
    n = len(vehicles)
    return Pack(
        energy_wh=float(sum(v.soc_wh for v in vehicles)),
        min_wh=float(sum(min(v.soc_wh, max(v.floor_wh, v.target_wh if v.departure else 0)) for v in vehicles)),
        max_wh=float(sum(max(v.capacity_wh, v.soc_wh) for v in vehicles)),
        charge_w=float(sum(v.max_charge_w for v in vehicles)),
        discharge_w=float(sum(v.max_discharge_w for v in vehicles if v.soc_wh >= v.floor_wh)),
        charge_efficiency=sum(v.charge_efficiency for v in vehicles) / n,
        discharge_efficiency=sum(v.discharge_efficiency for v in vehicles) / n,
    )


# --- settlement --------------------------------------------------------------------------------------------------


def peak_period_settle(*, site_id: int, period_start: datetime, now: datetime) -> PeakSettlement:
    """Settle the billing period containing ``period_start`` once it is over (idempotent: a settled period is
    returned as it is). Raises ``PeakError`` when the site has no tariff or the period is not over."""
    site = DepotSite.objects.get(pk=site_id)
    found = tariff_in_force(site=site, at=period_start)
    if found is None:
        raise PeakError(f"site {site.code} has no demand-charge tariff for {period_start:%Y-%m-%d}")
    tariff, spec = found
    start, end = spec.billing_period(period_start)
    if end > now:
        raise PeakError(f"billing period {start:%Y-%m-%d}..{end:%Y-%m-%d} is not over")
    existing = PeakSettlement.objects.filter(site=site, period_start=start).first()
    if existing is not None:
        return existing
    demand = site_demand(site=site, start=start, end=end, interval=spec.interval, known_at=now)
    fleet = fleet_at_site(site=site, start=start, end=end, interval=spec.interval)
    expected = spec.intervals(start, end)
    intervals = [
        IntervalDemand(s, demand.demand_w[s], fleet.discharge_w.get(s, 0)) for s in expected if s in demand.demand_w
    ]
    result = settle_peak_period(tariff=spec, intervals=intervals)
    if len(intervals) < len(expected):
        LOG.warning(
            "site %s: settling %s with %d of %d intervals metered", site.code, start, len(intervals), len(expected)
        )
    try:
        with transaction.atomic():
            settlement = PeakSettlement.objects.create(
                site=site,
                tariff=tariff,
                period_start=start,
                period_end=end,
                currency=spec.currency,
                metered_charge=result.metered_charge,
                counterfactual_charge=result.counterfactual_charge,
                avoided=result.avoided,
                intervals=[
                    [i.start.isoformat(), i.metered_w, i.fleet_discharge_w, i.counterfactual_w] for i in intervals
                ],
                intervals_expected=len(expected),
                intervals_metered=len(intervals),
                site_readings=len(demand.reading_ids),
                site_digest=digest(demand.reading_ids),
                fleet_readings=len(fleet.meter_ids),
                fleet_digest=digest(fleet.meter_ids),
                computed_at=now,
            )
            PeakSettlementLine.objects.bulk_create(
                PeakSettlementLine(
                    settlement=settlement,
                    charge_id=line.metered.charge.charge_id,
                    charge_name=line.metered.charge.name,
                    price_per_kw=line.metered.charge.price_per_kw,
                    metered_peak_w=line.metered.peak_w,
                    metered_peak_at=line.metered.at,
                    counterfactual_peak_w=line.counterfactual.peak_w,
                    counterfactual_peak_at=line.counterfactual.at,
                    metered_amount=line.metered.amount,
                    counterfactual_amount=line.counterfactual.amount,
                    avoided=line.avoided,
                )
                for line in result.lines
            )
    except IntegrityError:  # settled meanwhile by another worker
        return PeakSettlement.objects.get(site=site, period_start=start)
    LOG.info("site %s: billing period %s settled, avoided %s %s", site.code, start, settlement.avoided, spec.currency)
    return settlement
