"""Reads for regulation scoring and settlement: signal, basepoint, meter readings (deduplicated), prices.

Meter readings: the CSMS stores every sampled value it receives, so a reading retransmitted in a second message
(an offline queue flushed twice, a MeterValues resent after a lost CALLRESULT) may be stored twice. Everything here
counts a reading once: the key is (station, EVSE, measurand, phase, timestamp) and the first one received wins.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate, TruncHour
from numpy.typing import NDArray

from chargers.models import ENERGY_IMPORT_REGISTER, MeterValue, Station
from fleet.models import PlugSession, Role
from fleet.numerics.degradation import RATED_TEMPERATURE_C, DegradationParams
from fleet.selectors import is_operator, latest_soc, organisations_for, pack_temperatures, portfolios_for
from markets.models import Award, Product
from markets.regulation.models import (
    EnergyPrice,
    PerformanceScoreRecord,
    RegulationBasepoint,
    RegulationPrice,
    RegulationSignal,
    ReserveDeployment,
    Settlement,
    SettlementLine,
)

POWER_IMPORT = "Power.Active.Import"
POWER_EXPORT = "Power.Active.Export"
REGISTER_IMPORT = ENERGY_IMPORT_REGISTER
REGISTER_EXPORT = "Energy.Active.Export.Register"
OUTLET_LOCATIONS = ("", "Outlet")
# A power reading is the value in force for at most this long: regulating stations report every 1-2 s, an idle
# one every 60 s (the edge agent's IdleTxUpdatedInterval); past it the charge point's power is unknown.
POWER_MAX_AGE_S = 60.0

ChargePoint = tuple[int, int]  # (station pk, EVSE id)


def reserve_in_force(*, portfolio: str, at: datetime) -> tuple[int, datetime | None]:
    """(W of reserve discharge called on ``portfolio`` at ``at``, when the first of those events ends)."""
    active = ReserveDeployment.objects.filter(portfolio=portfolio, start__lte=at, end__gt=at)
    totals = active.aggregate(power=Sum("power_w"), until=Min("end"))
    return int(totals["power"] or 0), totals["until"]


def reserve_deployment_id(*, portfolio: str, event_id: str) -> int | None:
    """The stored event's id from its sender's reference; None if no such event."""
    return ReserveDeployment.objects.filter(portfolio=portfolio, event_id=event_id).values_list("pk", flat=True).first()


def reserve_deployment_end_at(pk: int) -> datetime | None:
    """When the stored event ends now (its sender may have shortened it); None if no such event."""
    return ReserveDeployment.objects.filter(pk=pk).values_list("end", flat=True).first()


def reserve_deployed_w(*, portfolio: str, grid_s: NDArray[np.float64]) -> NDArray[np.float64]:
    """W of reserve events in force on ``portfolio`` at each epoch second of ``grid_s`` (0 where none)."""
    out = np.zeros(grid_s.shape)
    if not grid_s.size:
        return out
    first, last = datetime.fromtimestamp(grid_s[0], UTC), datetime.fromtimestamp(grid_s[-1], UTC)
    events = ReserveDeployment.objects.filter(portfolio=portfolio, start__lte=last, end__gt=first)
    for start, end, power_w in events.values_list("start", "end", "power_w"):
        out[(grid_s >= start.timestamp()) & (grid_s < end.timestamp())] += power_w
    return out


def epoch_s(moment: datetime) -> float:
    return moment.timestamp()


@dataclass
class MeterSeries:
    """One charge point's deduplicated readings of one kind (net power W, or a register pair Wh)."""

    station_pk: int
    station_id: str
    evse_id: int
    times_s: NDArray[np.float64]
    values: NDArray[np.float64]  # net power (import - export), or import register
    second: NDArray[np.float64]  # export register for register series; unused for power
    meter_ids: list[int]
    duplicates: int
    transaction_pk: int | None = None
    id_token: str = ""

    @property
    def charge_point(self) -> ChargePoint:
        return (self.station_pk, self.evse_id)

    @property
    def digest(self) -> str:
        """SHA-256 of the ids of the readings used, in order: an auditor recomputes it to see the set unchanged."""
        return hashlib.sha256(",".join(map(str, self.meter_ids)).encode()).hexdigest()


@dataclass
class _Acc:
    station_id: str = ""
    rows: dict[tuple[float, str], dict[str, tuple[int, int]]] = field(default_factory=dict)  # (t, measurand)
    ids: list[int] = field(default_factory=list)
    duplicates: int = 0
    transaction_pk: int | None = None
    id_token: str = ""


def _meter_rows(measurands: tuple[str, str], start: datetime, end: datetime, stations: Iterable[int] | None):
    query = MeterValue.objects.filter(
        timestamp__gte=start, timestamp__lt=end, measurand__in=measurands, location__in=OUTLET_LOCATIONS
    )
    if stations is not None:
        query = query.filter(station_id__in=list(stations))
    return query.order_by("id").values_list(
        "id",
        "station_id",
        "station__station_id",
        "evse_id",
        "measurand",
        "phase",
        "timestamp",
        "value",
        "transaction_id",
        "transaction__id_token",
    )


def _collect(measurands: tuple[str, str], start: datetime, end: datetime, stations: Iterable[int] | None):
    accs: dict[ChargePoint, _Acc] = defaultdict(_Acc)
    seen: set[tuple[int, int, str, str, datetime]] = set()
    for pk, station_pk, station_id, evse_id, measurand, phase, ts, value, tx_pk, token in _meter_rows(
        measurands, start, end, stations
    ):
        acc = accs[(station_pk, evse_id)]
        acc.station_id = station_id
        key = (station_pk, evse_id, measurand, phase, ts)
        if key in seen:  # retransmitted reading: counted once, the first received
            acc.duplicates += 1
            continue
        seen.add(key)
        acc.ids.append(pk)
        phases = acc.rows.setdefault((ts.timestamp(), measurand), {})
        phases[phase] = (value, pk)
        if tx_pk is not None:
            acc.transaction_pk, acc.id_token = tx_pk, token or ""
    # A station's EVSE 0 is its main meter: when the EVSEs report, counting EVSE 0 as well would double the energy.
    metered_stations = {station_pk for station_pk, evse in accs if evse > 0}
    return {cp: acc for cp, acc in accs.items() if cp[1] > 0 or cp[0] not in metered_stations}


def _phase_total(phases: dict[str, tuple[int, int]]) -> int:
    """The total reading when the station sent one (phase ""), else the sum of its per-phase readings."""
    if "" in phases:
        return phases[""][0]
    return sum(value for value, _ in phases.values())


def _series(cp: ChargePoint, acc: _Acc, first: str, second: str) -> MeterSeries:
    by_time: dict[float, dict[str, int]] = defaultdict(dict)
    for (t, measurand), phases in acc.rows.items():
        by_time[t][measurand] = _phase_total(phases)
    times = np.array(sorted(by_time), dtype=float)
    firsts = np.array([by_time[t].get(first, 0) for t in times], dtype=float)
    seconds = np.array([by_time[t].get(second, 0) for t in times], dtype=float)
    return MeterSeries(
        station_pk=cp[0],
        station_id=acc.station_id,
        evse_id=cp[1],
        times_s=times,
        values=firsts,
        second=seconds,
        meter_ids=sorted(acc.ids),
        duplicates=acc.duplicates,
        transaction_pk=acc.transaction_pk,
        id_token=acc.id_token,
    )


def charge_point_power(
    *, start: datetime, end: datetime, stations: Iterable[int] | None = None, lookback_s: float = POWER_MAX_AGE_S
) -> list[MeterSeries]:
    """Net power (W, + import) per charge point from ``start - lookback`` to ``end``, deduplicated.

    The look-back gives the reading in force at ``start``. ``values`` = Power.Active.Import - Power.Active.Export
    at each timestamp (stations that report a signed import and no export work too).
    """
    accs = _collect((POWER_IMPORT, POWER_EXPORT), start - timedelta(seconds=lookback_s), end, stations)
    series = [_series(cp, acc, POWER_IMPORT, POWER_EXPORT) for cp, acc in accs.items()]
    for s in series:
        s.values, s.second = s.values - s.second, np.zeros(0)  # net W: import - export
    return sorted(series, key=lambda s: s.charge_point)


def charge_point_registers(
    *, start: datetime, end: datetime, stations: Iterable[int] | None = None
) -> dict[ChargePoint, MeterSeries]:
    """Energy registers per charge point: ``values`` import, ``second`` export (Wh), at each reading time.

    Only timestamps that carry both registers are kept (a meter with no export register counts export as 0), so a
    delta is always taken between comparable readings.
    """
    accs = _collect((REGISTER_IMPORT, REGISTER_EXPORT), start, end, stations)
    out: dict[ChargePoint, MeterSeries] = {}
    for cp, acc in accs.items():
        import_times = {t for (t, m) in acc.rows if m == REGISTER_IMPORT}
        export_times = {t for (t, m) in acc.rows if m == REGISTER_EXPORT}
        keep = import_times & export_times if export_times else import_times  # import-only meters: export 0
        acc.rows = {k: v for k, v in acc.rows.items() if k[0] in keep}
        out[cp] = _series(cp, acc, REGISTER_IMPORT, REGISTER_EXPORT)
    return out


def _held_series(model: type[RegulationSignal] | type[RegulationBasepoint], field_name: str, **filters):
    """Values of a step series from the one in force at ``start`` to ``end`` as (epoch s, values, count)."""
    start: datetime = filters.pop("start")
    end: datetime = filters.pop("end")
    base = model.objects.filter(**filters)
    before = base.filter(at__lte=start).order_by("-at").values_list("at", field_name)[:1]
    within = base.filter(at__gt=start, at__lt=end).order_by("at").values_list("at", field_name)
    rows = list(before) + list(within)
    times = np.array([at.timestamp() for at, _ in rows], dtype=float)
    values = np.array([float(v) for _, v in rows], dtype=float)
    return times, values, len(rows)


def signal_values(
    *, product: Product, portfolio: str, start: datetime, end: datetime
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """The normalised signal in force from ``start`` to ``end``: (epoch seconds, values, number of samples)."""
    return _held_series(RegulationSignal, "value", product=product, portfolio=portfolio, start=start, end=end)


def basepoint_values(
    *, product: Product, portfolio: str, start: datetime, end: datetime
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """The fleet basepoint (W) in force from ``start`` to ``end``."""
    return _held_series(RegulationBasepoint, "basepoint_w", product=product, portfolio=portfolio, start=start, end=end)


def awarded_capacity_w(*, product: Product, portfolio: str, at: datetime) -> int:
    """Regulation capacity (W) awarded to a portfolio for the interval containing ``at``."""
    total = Award.objects.filter(
        product=product, portfolio=portfolio, interval_start__lte=at, interval_end__gt=at
    ).aggregate(total=Sum("awarded_w"))["total"]
    return int(total or 0)


def awards_in_force(*, product: Product | None = None, at: datetime) -> list[Award]:
    query = Award.objects.filter(interval_start__lte=at, interval_end__gt=at, awarded_w__gt=0)
    if product is not None:
        query = query.filter(product=product)
    return list(query.select_related("product__operator").order_by("id"))


def awards_overlapping(*, start: datetime, end: datetime) -> list[Award]:
    """Awards (awarded_w > 0) in force at some instant of ``[start, end)``."""
    query = Award.objects.filter(interval_start__lt=end, interval_end__gt=start, awarded_w__gt=0)
    return list(query.select_related("product__operator").order_by("id"))


def regulation_price(*, product: Product, interval_start: datetime, as_of: datetime) -> RegulationPrice | None:
    """The newest belief about an hour's regulation prices known at ``as_of``."""
    return (
        RegulationPrice.objects.filter(product=product, interval_start=interval_start, belief_time__lte=as_of)
        .order_by("-belief_time", "-id")
        .first()
    )


def energy_prices(
    *, operator_id: int, location: str, start: datetime, end: datetime, as_of: datetime
) -> list[tuple[datetime, int, Decimal]]:
    """Energy price intervals (start, minutes, $/MWh) covering ``[start, end)``, newest belief known at ``as_of``."""
    rows = (
        EnergyPrice.objects.filter(
            Q(operator_id=operator_id, location=location, belief_time__lte=as_of),
            interval_start__gte=start,
            interval_start__lt=end,
        )
        .order_by("interval_start", "-belief_time", "-id")
        .values_list("interval_start", "interval_minutes", "price")
    )
    newest: dict[datetime, tuple[datetime, int, Decimal]] = {}
    for interval_start, minutes, price in rows:
        newest.setdefault(interval_start, (interval_start, minutes, price))
    return list(newest.values())


@dataclass(frozen=True)
class ChargePointVehicle:
    """Who a charge point served over a period: the fleet vehicle and its owner when known."""

    vehicle_id: int | None
    owner_id: int | None
    vehicle_ref: str
    owner_ref: str
    charge_efficiency: float = 0.92
    discharge_efficiency: float = 0.92
    capacity_wh: int = 0  # 0: unknown (no vehicle)
    degradation: DegradationParams | None = None  # the vehicle's own pack cost, cycle life and rated DoD
    pack_temperature_c: float = RATED_TEMPERATURE_C  # its newest known temperature


@dataclass(frozen=True, slots=True)
class PackHistory:
    """What settlement needs besides the meter to follow a pack over a period: the SoC belief at its start and the
    pack temperatures (epoch s, degC) in force over it."""

    soc_start_wh: int | None
    temperature_times_s: list[float]
    temperature_c: list[float]


def pack_history(*, vehicle_id: int, start: datetime, end: datetime) -> PackHistory:
    belief = latest_soc(vehicle_id, at=start)
    temps = pack_temperatures(vehicle_id, start=start, end=end)
    return PackHistory(
        soc_start_wh=belief.soc_wh if belief is not None else None,
        temperature_times_s=[at.timestamp() for at, _ in temps],
        temperature_c=[value for _, value in temps],
    )


def charge_point_vehicles(*, series: list[MeterSeries], start: datetime, end: datetime) -> list[ChargePointVehicle]:
    """The vehicle plugged in at each charge point for the longest part of ``[start, end)`` (``fleet.PlugSession``).

    Without a matching session the session's id token (or the charge point itself) names the vehicle and the owner
    is ``unassigned``: revenue is still attributed to where the energy was metered, never dropped.
    """
    sessions = (
        PlugSession.objects.filter(station_id__in={s.station_id for s in series}, started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .select_related("vehicle__fleet__organisation")
    )
    best: dict[tuple[str, int | None], tuple[float, PlugSession]] = {}
    for session in sessions:
        overlap = (min(session.ended_at or end, end) - max(session.started_at, start)).total_seconds()
        key = (session.station_id, session.evse_id)
        if key not in best or overlap > best[key][0]:
            best[key] = (overlap, session)
    out = []
    for s in series:
        found = best.get((s.station_id, s.evse_id)) or best.get((s.station_id, None))
        if found is None:
            out.append(ChargePointVehicle(None, None, s.id_token or f"{s.station_id}/{s.evse_id}", "unassigned"))
            continue
        vehicle = found[1].vehicle
        organisation = vehicle.fleet.organisation
        out.append(
            ChargePointVehicle(
                vehicle.pk,
                organisation.pk,
                vehicle.name,
                organisation.name,
                vehicle.charge_efficiency,
                vehicle.discharge_efficiency,
                capacity_wh=vehicle.usable_capacity_wh,
                degradation=vehicle.degradation_params(),
                pack_temperature_c=vehicle.pack_temperature_c,
            )
        )
    return out


# --- reports (scoped to the user) ----------------------------------------------------------------------------------


def market_wide(user: Any) -> bool:
    """Every settlement and score: operators, and holders of ``markets.view_settlement`` (an auditor an operator
    named in the admin)."""
    return is_operator(user) or bool(user.is_authenticated and user.has_perm("markets.view_settlement"))


def settlement_lines_for(user: Any) -> QuerySet[SettlementLine]:
    """Settlement lines (one vehicle's revenue in one award-hour) a user may see: all when market-wide, else those
    of vehicles owned by the organisations where the user is a fleet manager."""
    lines = SettlementLine.objects.select_related("settlement__award__product", "station")
    if market_wide(user):
        return lines
    return lines.filter(owner__in=organisations_for(user, roles=[Role.FLEET_MANAGER]))


def settlements_for(user: Any) -> QuerySet[Settlement]:
    """Award-level settlements (market figures): all when market-wide, else those of awards on the portfolios of
    the organisations where the user is a bidding admin."""
    settlements = Settlement.objects.select_related("award__product", "score")
    if market_wide(user):
        return settlements
    return settlements.filter(award__portfolio__in=sorted(portfolios_for(user, roles=[Role.BIDDING_ADMIN]) or ()))


def scores_for(user: Any) -> QuerySet[PerformanceScoreRecord]:
    """Performance scores: all for operators and holders of ``markets.view_performancescorerecord``, else those of
    the portfolios of the organisations where the user is a bidding admin."""
    scores = PerformanceScoreRecord.objects.select_related("product")
    if is_operator(user) or (user.is_authenticated and user.has_perm("markets.view_performancescorerecord")):
        return scores
    return scores.filter(portfolio__in=sorted(portfolios_for(user, roles=[Role.BIDDING_ADMIN]) or ()))


CENT = Decimal("0.01")
_MONEY_FIELDS = ("capacity_credit", "performance_credit", "energy_amount", "degradation_cost", "net")
MONEY_FIELDS = _MONEY_FIELDS

#: What the revenue pages call each kind of product the fleet sells.
PRODUCT_NAMES = {
    Product.Kind.REGULATION: "regulation",
    Product.Kind.RESERVE: "synchronized reserve",
    Product.Kind.PEAK_SHAVING: "peak shaving",
}


def product_name(kind: str) -> str:
    return PRODUCT_NAMES.get(kind, kind)  # type: ignore[call-overload]


def revenue_by(lines: QuerySet[SettlementLine], *, by: str) -> list[dict[str, Any]]:
    """Revenue totals of settlement lines per ``hour`` or ``day`` (UTC), ``product`` or ``vehicle``, each split by
    product (``product``: regulation, synchronized reserve, peak shaving, :data:`PRODUCT_NAMES`), and currency;
    money as Decimal."""
    keys = {
        "hour": TruncHour("settlement__period_start", tzinfo=UTC),
        "day": TruncDate("settlement__period_start", tzinfo=UTC),
        "product": F("settlement__award__product__kind"),
        "vehicle": F("vehicle_ref"),
    }
    if by not in keys:
        raise ValueError(f"revenue can be grouped by hour, day, product or vehicle, not {by!r}")
    sums = {field: Sum(field) for field in _MONEY_FIELDS}
    rows = (
        lines.annotate(key=keys[by], kind=F("settlement__award__product__kind"), currency=F("settlement__currency"))
        .values("key", "kind", "currency")
        .annotate(**sums, import_wh=Sum("import_wh"), export_wh=Sum("export_wh"), lines=Count("id"))
        .order_by("key", "kind", "currency")
    )
    out: list[dict[str, Any]] = []
    for values in rows:
        row: dict[str, Any] = dict(values)
        for money_field in _MONEY_FIELDS:
            # Lines hold whole cents; SQLite sums decimals as binary floats (0.880000000000001), so the sum is put
            # back on the cent it must be (exact on PostgreSQL already).
            if row[money_field] is not None:
                row[money_field] = Decimal(row[money_field]).quantize(CENT)
        row["product"] = product_name(row.pop("kind"))
        if by == "product":
            row["key"] = row["product"]
        out.append(row)
    return out


def portfolio_stations(*, portfolio: str, start: datetime, end: datetime) -> list[int] | None:
    """Stations whose meters make up a portfolio's response over ``[start, end)``.

    Portfolio ``fleet-<id>`` (as dispatch names it): the stations where that fleet's vehicles were plugged in at
    some point of the period (``fleet.PlugSession``). Any other name (``default``): every station (None).
    """
    prefix, _, number = portfolio.partition("-")
    if prefix != "fleet" or not number.isdigit():
        return None
    station_ids = (
        PlugSession.objects.filter(vehicle__fleet_id=int(number), started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .values_list("station_id", flat=True)
    )
    return list(Station.objects.filter(station_id__in=set(station_ids)).values_list("pk", flat=True))
