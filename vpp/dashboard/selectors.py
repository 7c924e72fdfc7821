"""Reads for the fleet dashboard: one call assembles what a fleet manager sees, scoped to their organisations.

* :func:`dashboard_overview` -- stations, plugged-in vehicles (SoC against floor and target, departure, projected SoC
  at departure), fleet power of the stations online, the flexibility envelope, revenue and open alerts.
* :func:`revenue_summary` -- revenue today and this month, overall, per vehicle (settlement lines) and per product
  (regulation, synchronized reserve, peak shaving).
* Power history (``selectors_history``) and regulation now (``selectors_regulation``) live beside this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import OuterRef, QuerySet, Subquery, Sum

from chargers.models import MeterValue, Station
from fleet.models import FleetAlert, Vehicle
from fleet.numerics.departure import departure_outlook, discharge_room_wh
from fleet.numerics.flexibility import fleet_flexibility
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.selectors import alerts_for, plugged_in_snapshots, stations_for, vehicles_for
from markets.models import Product
from markets.peak.selectors import peak_settlements_for
from markets.regulation.selectors import PRODUCT_NAMES, product_name, settlement_lines_for
from markets.templatetags.money import money_text

#: The dashboard's horizon: the next 24 h in market intervals of 15 min.
HORIZON_INTERVALS = 96
INTERVAL_S = 900
_POWER_IMPORT = "Power.Active.Import"
_POWER_EXPORT = "Power.Active.Export"
ALERTS_SHOWN = 50
ALERTS_CLEARED_WITHIN = timedelta(hours=24)


@dataclass(frozen=True)
class DashboardOverview:
    at: datetime
    stations_total: int
    stations_online: int
    stations: list[dict[str, Any]]
    vehicles: list[dict[str, Any]]
    fleet_power_w: int  # stations online only: an offline station's last reading is not its power now
    flexibility: dict[str, object]
    power_range_kw: list[float] = field(default_factory=list)  # the live chart's fixed y range
    revenue: dict[str, Any] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)


def interval_floor(moment: datetime, interval_s: int = INTERVAL_S) -> datetime:
    seconds = int(moment.timestamp()) // interval_s * interval_s
    return datetime.fromtimestamp(seconds, tz=moment.tzinfo)


def dashboard_overview(*, user: AbstractBaseUser | AnonymousUser, at: datetime) -> DashboardOverview:
    snapshots = plugged_in_snapshots(at=at, vehicles=vehicles_for(user))
    stations = station_rows(stations_for(user))
    envelope = fleet_flexibility(
        snapshots, start=interval_floor(at), intervals=HORIZON_INTERVALS, interval_s=INTERVAL_S
    )
    online = {s["station_id"] for s in stations if s["online"]}
    names = dict(Vehicle.objects.filter(id__in=[s.vehicle_id for s in snapshots]).values_list("id", "name"))
    return DashboardOverview(
        at=at,
        stations_total=len(stations),
        stations_online=len(online),
        stations=stations,
        vehicles=[vehicle_row(s, name=names.get(s.vehicle_id, ""), at=at, online=online) for s in snapshots],
        fleet_power_w=fleet_power_w(stations),
        flexibility=envelope.total.as_dict(),
        power_range_kw=power_range_kw(snapshots),
        revenue=revenue_summary(user=user, at=at),
        alerts=alert_rows(alerts_for(user, since=at - ALERTS_CLEARED_WITHIN)[:ALERTS_SHOWN]),
    )


def station_rows(stations: QuerySet[Station]) -> list[dict[str, Any]]:
    """The user's stations with their newest net power reading (import - export, W), in one query."""

    def newest(measurand: str) -> Subquery:
        rows = MeterValue.objects.filter(station_id=OuterRef("pk"), measurand=measurand, phase="")
        return Subquery(rows.order_by("-timestamp", "-id").values("value")[:1])

    rows = (
        stations.annotate(import_w=newest(_POWER_IMPORT), export_w=newest(_POWER_EXPORT))
        .order_by("station_id")
        .values("station_id", "online", "last_seen", "ocpp_version", "import_w", "export_w")
    )
    out = []
    for row in rows:
        has_power = row["import_w"] is not None or row["export_w"] is not None
        out.append(
            {
                "station_id": row["station_id"],
                "online": row["online"],
                "last_seen": row["last_seen"],
                "ocpp_version": row["ocpp_version"],
                "power_w": (row["import_w"] or 0) - (row["export_w"] or 0) if has_power else None,
            }
        )
    return out


def fleet_power_w(stations: list[dict[str, Any]]) -> int:
    """Net power of the stations online (W, + charging). An offline station's newest reading is what it drew when
    it was last heard, not what it draws now: it is left out."""
    return sum(s["power_w"] or 0 for s in stations if s["online"])


def power_range_kw(snapshots: list[VehicleSnapshot], *, min_span_kw: float = 20.0) -> list[float]:
    """A fixed y range for the fleet power chart (kW): what the plugged-in cars can draw or give, at least
    +/- ``min_span_kw`` / 2, so meter noise on an idle fleet does not fill the chart."""
    high = sum(s.max_charge_w for s in snapshots) / 1000
    low = -sum(s.max_discharge_w for s in snapshots) / 1000
    half = min_span_kw / 2
    return [round(min(low, -half) * 1.1, 1), round(max(high, half) * 1.1, 1)]


def vehicle_row(snapshot: VehicleSnapshot, *, name: str, at: datetime, online: set[str]) -> dict[str, Any]:
    capacity = snapshot.capacity_wh or 1
    outlook = departure_outlook(snapshot, now=at)
    station_online = bool(snapshot.station_id and snapshot.station_id in online)
    return {
        "vehicle_id": snapshot.vehicle_id,
        "name": name or f"vehicle {snapshot.vehicle_id}",
        "station_id": snapshot.station_id,
        "station_online": station_online,
        "soc_pct": round(100 * snapshot.soc_fraction, 1),
        "floor_pct": round(100 * snapshot.floor_wh / capacity, 1),
        "departure": snapshot.departure,
        "target_pct": round(100 * snapshot.target_wh / capacity, 1),
        "projected_pct": outlook.projected_pct,
        "at_risk": outlook.at_risk,
        "shortfall_kwh": round(outlook.shortfall_wh / 1000, 1),
        "max_charge_kw": snapshot.max_charge_w / 1000,
        "max_discharge_kw": snapshot.max_discharge_w / 1000,
        "discharge_room_kwh": round(discharge_room_wh(snapshot) / 1000, 1),
    }


def _money(value: Decimal | None) -> Decimal:
    return (value or Decimal(0)).quantize(Decimal("0.01"))


def revenue_summary(*, user: AbstractBaseUser | AnonymousUser, at: datetime) -> dict[str, Any]:
    """Net revenue (settlement lines the user may see: a fleet manager's organisations' vehicles, an operator's
    all) today and this month (UTC), overall and per vehicle; the part of it from the simulated history apart."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    lines = settlement_lines_for(user).filter(settlement__period_start__gte=month, settlement__period_start__lt=at)
    today = lines.filter(settlement__period_start__gte=day)
    currencies = sorted(set(lines.values_list("settlement__currency", flat=True)))
    currency = currencies[0] if len(currencies) == 1 else ("mixed" if currencies else "USD")

    def totals(rows: Any) -> dict[str, Any]:
        sums = rows.aggregate(net=Sum("net"))
        simulated = rows.filter(settlement__simulated=True).aggregate(net=Sum("net"))
        net, sim = _money(sums["net"]), _money(simulated["net"])
        # The *_text forms are what the page shows ("$1,234.56"), written once here for the template and the feed.
        return {
            "net": net,
            "simulated": sim,
            "net_text": money_text(net, currency),
            "simulated_text": money_text(sim, currency),
        }

    by_vehicle: dict[str, dict[str, Any]] = {}
    for when, rows in (("month", lines), ("today", today)):
        for ref, net, simulated in (
            rows.values("vehicle_ref", "settlement__simulated")
            .annotate(net=Sum("net"))
            .values_list("vehicle_ref", "net", "settlement__simulated")
        ):
            entry = by_vehicle.setdefault(
                ref, {"vehicle": ref, "today": Decimal(0), "month": Decimal(0), "simulated": False}
            )
            entry[when] = _money(entry[when] + (net or 0))
            entry["simulated"] = entry["simulated"] or simulated
    for entry in by_vehicle.values():
        entry["today_text"], entry["month_text"] = (
            money_text(entry["today"], currency),
            money_text(entry["month"], currency),
        )
    peak = peak_settlements_for(user).filter(period_start__gte=month, period_start__lt=at)
    by_product = revenue_by_product(lines=lines, peak=peak, day=day, currency=currency)
    summary: dict[str, Any] = {
        "currency": currency,
        "today": totals(today),
        "month": totals(lines),
        "by_vehicle": sorted(by_vehicle.values(), key=lambda e: (-e["month"], e["vehicle"])),
        "by_product": by_product,
    }
    for when in ("today", "month"):  # the site's avoided demand charges count too (peak shaving has no vehicle lines)
        avoided = sum((p["avoided_" + when] for p in by_product), Decimal(0))
        if avoided:
            net = _money(summary[when]["net"] + avoided)
            summary[when].update(net=net, net_text=money_text(net, currency))
    return summary


def revenue_by_product(*, lines: Any, peak: Any, day: datetime, currency: str) -> list[dict[str, Any]]:
    """Net revenue today and this month per product, every product the fleet sells listed (side by side, zero
    when it earned nothing): regulation and synchronized reserve from settlement lines, peak shaving from the
    sites' avoided demand charges (``markets.peak``: per billing period, counted at the period's start)."""
    zero = Decimal(0)
    fields = ("today", "month", "simulated", "avoided_today", "avoided_month")
    out: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return out.setdefault(name, {"product": name, **dict.fromkeys(fields, zero)})

    for name in PRODUCT_NAMES.values():
        entry(name)
    for kind, start, simulated, net in lines.values_list(
        "settlement__award__product__kind", "settlement__period_start", "settlement__simulated", "net"
    ):
        row = entry(product_name(kind))
        row["month"] += net
        if start >= day:
            row["today"] += net
        if simulated:
            row["simulated"] += net
    row = entry(PRODUCT_NAMES[Product.Kind.PEAK_SHAVING])
    for start, avoided in peak.values_list("period_start", "avoided"):
        row["month"] += avoided
        row["avoided_month"] += avoided
        if start >= day:
            row["today"] += avoided
            row["avoided_today"] += avoided
    for row in out.values():
        for key in ("today", "month", "simulated"):
            row[key] = _money(row[key])
            row[key + "_text"] = money_text(row[key], currency)
    return list(out.values())


def alert_rows(alerts: QuerySet[FleetAlert]) -> list[dict[str, Any]]:
    return [
        {
            "id": a.pk,
            "kind": a.kind,
            "label": a.get_kind_display(),
            "subject": a.subject,
            "message": a.message,
            "raised_at": a.raised_at,
            "cleared_at": a.cleared_at,
            "open": a.cleared_at is None,
        }
        for a in alerts
    ]
