"""Regulation: signal intake, response measurement from stored meter values, performance scoring, settlement.

Functions the rest of the project calls (keyword-only, typed):

* :func:`regulation_signal_record` / :func:`regulation_signal_import` -- store signal values (REST, WebSocket, file).
* :func:`regulation_basepoint_record` -- dispatch records the fleet basepoint it regulates around.
* :func:`regulation_trace` -- signal and measured fleet response on the 10-s scoring rows (charts, replay output).
* :func:`performance_score_compute` -- score an hour (391 rows) or a test period; stored, idempotent.
* :func:`settlement_compute` -- settle one award over one hour, attributed to charge points / vehicles / owners.
* :func:`regulation_hour_settle` -- score and settle every award in force in an hour (the Celery task calls it).
* :func:`reconciliation_report` -- settled energy against meter register deltas (agreement within 0.1 %).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone
from numpy.typing import NDArray

from markets.models import Award, Product
from markets.regulation import scoring
from markets.regulation.metering import Reconciliation, interval_energy_wh, reconcile
from markets.regulation.models import (
    EnergyPrice,
    PerformanceScoreRecord,
    RegulationBasepoint,
    RegulationPrice,
    RegulationSignal,
    ReserveDeployment,
    Settlement,
    SettlementLine,
    SignalSource,
)
from markets.regulation.selectors import (
    POWER_MAX_AGE_S,
    ChargePointVehicle,
    MeterSeries,
    awarded_capacity_w,
    awards_in_force,
    basepoint_values,
    charge_point_power,
    charge_point_registers,
    charge_point_vehicles,
    energy_prices,
    portfolio_stations,
    regulation_price,
    signal_values,
)
from markets.regulation.settlement import (
    DegradationCost,
    IntervalEnergy,
    RegulationTerms,
    SettlementError,
    VehicleMetering,
    settle_award_hour,
)
from markets.regulation.signals import SignalTrace

LOG = logging.getLogger(__name__)
SIGNAL_PLACES = Decimal("0.00001")
SIGNAL_MAX_AGE_S = 10.0  # the operator sends every 2 s; a row with no value for 10 s cannot be scored
HOUR = timedelta(hours=1)
ROW = timedelta(seconds=scoring.SAMPLE_PERIOD_S)


class RegulationError(ValueError):
    """A regulation request that cannot be carried out; the message says why."""


class SignalConflict(RegulationError):
    """A different value for a signal instant already stored."""


class ReserveConflict(RegulationError):
    """A different reserve event under a reference already stored for the portfolio."""


#: Longest reserve event accepted (PJM synchronized reserve events last at most 30 minutes; leave room).
RESERVE_MAX = timedelta(hours=4)


def _utc(moment: datetime, name: str) -> datetime:
    if timezone.is_naive(moment):
        raise RegulationError(f"{name} must carry a UTC offset")
    return moment.astimezone(UTC)


def signal_value(raw: object) -> Decimal:
    """A normalised signal value in [-1, 1], kept to 5 places (the RegD files' precision); RegulationError if not.

    The one parser of signal values: storage here and the dispatch edges (``vpp.services``) alike.
    """
    try:
        number = Decimal(str(raw)).quantize(SIGNAL_PLACES, rounding=ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError) as exc:
        raise RegulationError(f"signal value {raw!r} is not a number") from exc
    if not number.is_finite() or not Decimal(-1) <= number <= Decimal(1):
        raise RegulationError(f"signal value {raw} is outside the normalised range [-1, 1]")
    return number


# --- signal and basepoint intake ---------------------------------------------------------------------------------


def reserve_deployment_record(
    *,
    portfolio: str,
    event_id: str,
    power_w: int,
    start: datetime,
    end: datetime,
    source: str,
    received_by_id: int | None = None,
) -> tuple[ReserveDeployment, bool]:
    """Store one reserve event called on ``portfolio``; returns ``(row, created)``.

    Idempotent on ``(portfolio, event_id)``: the same event again returns the stored row with ``created=False``,
    a different one under the same reference raises :class:`ReserveConflict`.
    """
    start, end = _utc(start, "start"), _utc(end, "end")
    if power_w <= 0:
        raise RegulationError("a reserve deployment asks for a positive power (W of discharge)")
    if end <= start:
        raise RegulationError("a reserve deployment ends after it starts")
    if end - start > RESERVE_MAX:
        raise RegulationError(f"a reserve deployment lasts at most {RESERVE_MAX}")
    fields = {"power_w": power_w, "start": start, "end": end}
    try:
        with transaction.atomic():
            row = ReserveDeployment.objects.create(
                portfolio=portfolio,
                event_id=event_id,
                source=source,
                belief_time=timezone.now(),
                received_by_id=received_by_id,
                **fields,
            )
        return row, True
    except IntegrityError:
        existing = ReserveDeployment.objects.get(portfolio=portfolio, event_id=event_id)
        if any(getattr(existing, name) != value for name, value in fields.items()):
            raise ReserveConflict(
                f"reserve event {event_id!r} of {portfolio!r} is already stored as {existing}; refusing a different one"
            ) from None
        return existing, False


def regulation_signal_record(
    *,
    product: Product,
    portfolio: str,
    at: datetime,
    value: Decimal | float | str,
    source: str,
    source_ref: str = "",
    received_by_id: int | None = None,
    belief_time: datetime | None = None,
) -> tuple[RegulationSignal, bool]:
    """Store one signal value; returns ``(row, created)``.

    Idempotent: the same value for the same instant returns the stored row with ``created=False``; a different
    value raises :class:`SignalConflict`. The value is kept to 5 decimal places (the RegD files' precision).
    """
    if product.kind != Product.Kind.REGULATION:
        raise RegulationError(f"{product} is not a regulation product")
    at = _utc(at, "at")
    number = signal_value(value)
    try:
        with transaction.atomic():
            row = RegulationSignal.objects.create(
                product=product,
                portfolio=portfolio,
                at=at,
                value=number,
                source=source,
                source_ref=source_ref,
                belief_time=belief_time or timezone.now(),
                received_by_id=received_by_id,
            )
        return row, True
    except IntegrityError:
        existing = RegulationSignal.objects.get(product=product, portfolio=portfolio, at=at)
        if existing.value != number:
            raise SignalConflict(
                f"the signal at {at.isoformat()} is already {existing.value} (from {existing.source}); "
                f"refusing {number}"
            ) from None
        return existing, False


def regulation_signal_import(
    *, product: Product, portfolio: str, trace: SignalTrace, start: datetime, source_ref: str = ""
) -> int:
    """Store a whole signal file from ``start`` on (file replay); instants already stored are left as they are.

    Returns the number of rows created.
    """
    start = _utc(start, "start")
    now = timezone.now()
    rows = [
        RegulationSignal(
            product=product,
            portfolio=portfolio,
            at=start + timedelta(seconds=int(offset)),
            value=signal_value(float(value)),
            source=SignalSource.FILE,
            source_ref=source_ref or trace.name,
            belief_time=now,
        )
        for offset, value in zip(trace.offsets_s, trace.values, strict=True)
    ]
    before = RegulationSignal.objects.filter(product=product, portfolio=portfolio).count()
    RegulationSignal.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)
    return RegulationSignal.objects.filter(product=product, portfolio=portfolio).count() - before


def regulation_basepoint_record(
    *, product: Product, portfolio: str, at: datetime, basepoint_w: int, source: str = "dispatch"
) -> RegulationBasepoint:
    """Record the fleet basepoint (W, + charging) dispatch regulates around from ``at`` on (last write wins)."""
    row, _ = RegulationBasepoint.objects.update_or_create(
        product=product,
        portfolio=portfolio,
        at=_utc(at, "at"),
        defaults={"basepoint_w": int(basepoint_w), "source": source, "belief_time": timezone.now()},
    )
    return row


def regulation_price_record(
    *,
    product: Product,
    interval_start: datetime,
    performance_price: Decimal,
    mileage_ratio: Decimal,
    capacity_price: Decimal | None = None,
    source: str = "operator",
    source_ref: str = "",
    belief_time: datetime | None = None,
) -> RegulationPrice:
    """Record a belief about an hour's RMPCP, mileage ratio and (optionally) RMCCP."""
    return RegulationPrice.objects.create(
        product=product,
        interval_start=_utc(interval_start, "interval_start"),
        capacity_price=capacity_price,
        performance_price=performance_price,
        mileage_ratio=mileage_ratio,
        source=source,
        source_ref=source_ref,
        belief_time=belief_time or timezone.now(),
    )


def energy_price_record(
    *,
    operator_id: int,
    interval_start: datetime,
    interval_minutes: int,
    price: Decimal,
    location: str = "",
    source: str = "operator",
    source_ref: str = "",
    belief_time: datetime | None = None,
) -> EnergyPrice:
    """Record a belief about an interval's energy price ($/MWh)."""
    return EnergyPrice.objects.create(
        operator_id=operator_id,
        location=location,
        interval_start=_utc(interval_start, "interval_start"),
        interval_minutes=interval_minutes,
        price=price,
        source=source,
        source_ref=source_ref,
        belief_time=belief_time or timezone.now(),
    )


# --- response measurement and scoring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RegulationTrace:
    """Signal and measured response on the 10-s scoring rows.

    ``reg_mw`` = AREG x signal; ``response_mw`` = (basepoint - fleet power) / 1e6 (PJM: + = regulation up).
    ``power_w`` holds each charge point's power in force at each row (0 where unknown), one row per charge point.
    """

    start: datetime
    grid_s: NDArray[np.float64]
    signal: NDArray[np.float64]
    reg_mw: NDArray[np.float64]
    response_mw: NDArray[np.float64]
    fleet_power_w: NDArray[np.float64]
    basepoint_w: NDArray[np.float64]
    capacity_w: int
    series: list[MeterSeries]
    power_w: NDArray[np.float64]
    signal_samples: int
    basepoint_samples: int

    @property
    def meter_values(self) -> int:
        return sum(len(s.meter_ids) for s in self.series)

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.series)


def regulation_trace(
    *,
    product: Product,
    portfolio: str,
    start: datetime,
    rows: int,
    capacity_w: int | None = None,
    stations: Iterable[int] | None = None,
) -> RegulationTrace:
    """Put the stored signal, basepoint and meter values of ``rows`` 10-s rows from ``start`` on the scoring grid.

    ``capacity_w`` defaults to the capacity awarded for the interval containing ``start``.
    """
    start = _utc(start, "start")
    end = start + ROW * (rows - 1) + timedelta(seconds=1)
    if capacity_w is None:
        capacity_w = awarded_capacity_w(product=product, portfolio=portfolio, at=start)
    capacity = capacity_w
    if capacity <= 0:
        raise RegulationError(f"no regulation capacity awarded to {portfolio} for {product} at {start.isoformat()}")
    grid = scoring.scoring_grid(start.timestamp(), rows)
    sig_t, sig_v, sig_n = signal_values(product=product, portfolio=portfolio, start=start, end=end)
    try:
        signal = scoring.align_signal(sig_t, sig_v, grid, capacity_mw=1.0, max_age_s=SIGNAL_MAX_AGE_S)
    except scoring.ScoringError as exc:
        raise RegulationError(f"signal incomplete from {start.isoformat()}: {exc}") from exc
    base_t, base_v, base_n = basepoint_values(product=product, portfolio=portfolio, start=start, end=end)
    basepoint = scoring.sample_hold(base_t, base_v, grid, max_age_s=np.inf) if base_n else np.zeros(grid.shape)
    basepoint = np.nan_to_num(basepoint, nan=0.0)
    if stations is None:
        stations = portfolio_stations(portfolio=portfolio, start=start, end=end)
    series = charge_point_power(start=start, end=end, stations=stations)
    power = np.zeros((len(series), grid.size))
    for i, s in enumerate(series):
        power[i] = np.nan_to_num(scoring.sample_hold(s.times_s, s.values, grid, max_age_s=POWER_MAX_AGE_S), nan=0.0)
    fleet_power = power.sum(axis=0)
    return RegulationTrace(
        start=start,
        grid_s=grid,
        signal=signal,
        reg_mw=signal * capacity / 1e6,
        response_mw=(basepoint - fleet_power) / 1e6,
        fleet_power_w=fleet_power,
        basepoint_w=basepoint,
        capacity_w=capacity,
        series=series,
        power_w=power,
        signal_samples=sig_n,
        basepoint_samples=base_n,
    )


def _dec6(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)


def _signal_mileage(product: Product, portfolio: str, start: datetime, end: datetime) -> Decimal:
    """Mileage of the signal as sent (2-s values) from the one in force at ``start`` to ``end`` inclusive."""
    _, values, _ = signal_values(product=product, portfolio=portfolio, start=start, end=end + timedelta(seconds=1))
    return Decimal(repr(scoring.mileage(values))).quantize(Decimal("0.00001"), rounding=ROUND_HALF_EVEN)


def performance_score_compute(
    *,
    product: Product,
    portfolio: str = "default",
    period_start: datetime,
    kind: str = PerformanceScoreRecord.Kind.HOURLY,
    rows: int = scoring.HOURLY_ROWS,
    capacity_w: int | None = None,
    stations: Iterable[int] | None = None,
    recompute: bool = False,
    trace: RegulationTrace | None = None,
) -> PerformanceScoreRecord:
    """Score a period from stored signal and meter values and store the result (returned if already stored).

    Hourly: 391 rows from the top of the hour (computable 5 min 10 s after the hour ends). Test: any ``rows``.
    ``trace`` lets a caller that already read the period (settlement) pass it instead of reading it again.
    """
    period_start = _utc(period_start, "period_start")
    if not recompute:
        stored = PerformanceScoreRecord.objects.filter(
            product=product, portfolio=portfolio, kind=kind, period_start=period_start
        ).first()
        if stored is not None:
            return stored
    if trace is None:
        trace = regulation_trace(
            product=product,
            portfolio=portfolio,
            start=period_start,
            rows=rows,
            capacity_w=capacity_w,
            stations=stations,
        )
    try:
        score = scoring.performance_score(trace.reg_mw, trace.response_mw)
    except scoring.ScoringError as exc:
        raise RegulationError(f"cannot score {product} from {period_start.isoformat()}: {exc}") from exc
    scored = rows - scoring.LOOKAHEAD_ROWS
    fields = {
        "period_end": period_start + ROW * scored,
        "capacity_w": trace.capacity_w,
        "accuracy": _dec6(score.accuracy),
        "delay": _dec6(score.delay),
        "precision": _dec6(score.precision),
        "composite": _dec6(score.composite),
        "passed": score.passed,
        "rows": rows,
        "signal_mileage": _signal_mileage(product, portfolio, period_start, period_start + ROW * scored),
        "signal_samples": trace.signal_samples,
        "meter_values": trace.meter_values,
        "duplicates_ignored": trace.duplicates,
        "stations": len(trace.series),
        "inputs": {
            "basepoint": "recorded" if trace.basepoint_samples else "none recorded: 0 W assumed",
            "power_max_age_s": POWER_MAX_AGE_S,
            "signal_max_age_s": SIGNAL_MAX_AGE_S,
            "alignment": "value in force at each 10-s row (sample and hold)",
        },
        "computed_at": timezone.now(),
    }
    record, _ = PerformanceScoreRecord.objects.update_or_create(
        product=product, portfolio=portfolio, kind=kind, period_start=period_start, defaults=fields
    )
    return record


# --- settlement --------------------------------------------------------------------------------------------------


def _price_edges(
    award: Award, start: datetime, end: datetime, as_of: datetime, location: str
) -> tuple[list[datetime], dict[datetime, Decimal]]:
    intervals = energy_prices(
        operator_id=award.product.operator_id, location=location, start=start, end=end, as_of=as_of
    )
    edges = [start]
    prices: dict[datetime, Decimal] = {}
    for interval_start, minutes, price in intervals:
        if interval_start != edges[-1]:
            raise SettlementError(f"no energy price for {edges[-1].isoformat()} (next known: {interval_start})")
        prices[interval_start] = price
        edges.append(interval_start + timedelta(minutes=minutes))
    if edges[-1] < end:
        raise SettlementError(f"no energy price for {edges[-1].isoformat()} onwards")
    return edges, prices


def _energy_award(award: Award, period_start: datetime) -> bool:
    """Whether this award carries the portfolio-hour's energy and degradation.

    A fleet holding two awards in one hour (regulation and reserve, say) moves its energy once: it is settled on
    one award only -- the regulation award if any, else the lowest id -- so it is never counted twice.
    """
    siblings = [a for a in awards_in_force(at=period_start) if a.portfolio == award.portfolio]
    siblings.sort(key=lambda a: (a.product.kind != Product.Kind.REGULATION, a.id))
    return bool(siblings) and siblings[0].id == award.id


def _metering(
    trace: RegulationTrace, owners: list[ChargePointVehicle], edges: list[datetime], with_energy: bool, scored: int
) -> list[VehicleMetering]:
    """What each charge point delivered: its share key (regulation work, Wh) and its energy per price interval."""
    edges_s = [e.timestamp() for e in edges]
    out = []
    for i, s in enumerate(trace.series):
        who = owners[i]
        held = trace.power_w[i, :scored]
        response_wh = round(float(np.abs(held - held.mean()).sum()) * scoring.SAMPLE_PERIOD_S / 3600.0)
        energy: tuple[IntervalEnergy, ...] = ()
        if with_energy:
            imported, exported = interval_energy_wh(s.times_s, s.values, edges_s, max_hold_s=POWER_MAX_AGE_S)
            energy = tuple(IntervalEnergy(edges[k], int(imported[k]), int(exported[k])) for k in range(len(edges) - 1))
        out.append(
            VehicleMetering(
                vehicle_id=i,  # position in trace.series: lines are mapped back to charge points by it
                owner=who.owner_id or who.owner_ref,
                response_wh=response_wh,
                energy=energy,
                charge_efficiency=who.charge_efficiency,
                discharge_efficiency=who.discharge_efficiency,
            )
        )
    return out


def settlement_compute(
    *,
    award: Award,
    period_start: datetime,
    location: str = "",
    degradation: DegradationCost | None = None,
    stations: Iterable[int] | None = None,
    recompute: bool = False,
) -> Settlement:
    """Settle one award over the hour from ``period_start``; stored with its vehicle lines (returned if stored).

    Regulation awards are paid at the hour's performance score (computed if not yet stored); other products at 1.
    Prices: the newest :class:`RegulationPrice` belief for the hour (capacity price defaults to the award's
    clearing price) and the :class:`EnergyPrice` intervals covering the hour. Raises :class:`SettlementError` for
    missing inputs rather than settling on a guess.
    """
    period_start = _utc(period_start, "period_start")
    period_end = period_start + HOUR
    if not (award.interval_start <= period_start and period_end <= award.interval_end):
        raise SettlementError(f"the hour from {period_start.isoformat()} is outside award {award.pk}'s interval")
    if not recompute:
        stored = Settlement.objects.filter(award=award, period_start=period_start).first()
        if stored is not None:
            return stored
    now = timezone.now()
    product = award.product
    regulated = product.kind == Product.Kind.REGULATION
    score_row = None
    score: Decimal = Decimal(1)
    capacity_price, performance_price, mileage_ratio = award.clearing_price, Decimal(0), Decimal(1)
    if regulated:  # prices first: a missing price fails fast, before the meter values are read
        price = regulation_price(product=product, interval_start=period_start, as_of=now)
        if price is None:
            raise SettlementError(f"no regulation prices (RMPCP, mileage ratio) for {period_start.isoformat()}")
        capacity_price = price.capacity_price if price.capacity_price is not None else award.clearing_price
        performance_price, mileage_ratio = price.performance_price, price.mileage_ratio
    with_energy = _energy_award(award, period_start)
    edges, prices = _price_edges(award, period_start, period_end, now, location) if with_energy else ([], {})
    rows = scoring.HOURLY_ROWS if regulated else 361
    scored = rows - scoring.LOOKAHEAD_ROWS if regulated else 360
    if regulated:
        # One read of the hour serves both the score (signal scaled by the portfolio's awarded capacity, as the
        # operator scores it) and the metering of this award.
        trace = regulation_trace(
            product=product, portfolio=award.portfolio, start=period_start, rows=rows, stations=stations
        )
        score_row = performance_score_compute(
            product=product, portfolio=award.portfolio, period_start=period_start, trace=trace
        )
        score = score_row.composite
    else:
        trace = _power_only_trace(period_start, rows, award.portfolio, stations)
    owners = charge_point_vehicles(series=trace.series, start=period_start, end=period_end)
    metering = _metering(trace, owners, edges, with_energy, scored)
    terms = RegulationTerms(
        awarded_w=award.awarded_w,
        hours=Decimal(1),
        capacity_price=capacity_price,
        performance_price=performance_price,
        mileage_ratio=mileage_ratio,
    )
    result = settle_award_hour(
        terms=terms, score=score, vehicles=metering, energy_prices=prices, degradation=degradation
    )
    used_prices = [[start.isoformat(), str(price)] for start, price in sorted(prices.items())]
    return _settlement_store(award, period_start, period_end, score_row, terms, result, trace, owners, now, used_prices)


def _power_only_trace(start: datetime, rows: int, portfolio: str, stations: Iterable[int] | None) -> RegulationTrace:
    """Meter values on the grid for a product with no signal (reserve, peak shaving)."""
    grid = scoring.scoring_grid(start.timestamp(), rows)
    end = start + ROW * (rows - 1) + timedelta(seconds=1)
    if stations is None:
        stations = portfolio_stations(portfolio=portfolio, start=start, end=end)
    series = charge_point_power(start=start, end=end, stations=stations)
    power = np.zeros((len(series), grid.size))
    for i, s in enumerate(series):
        power[i] = np.nan_to_num(scoring.sample_hold(s.times_s, s.values, grid, max_age_s=POWER_MAX_AGE_S), nan=0.0)
    zeros = np.zeros(grid.shape)
    return RegulationTrace(
        start=start,
        grid_s=grid,
        signal=zeros,
        reg_mw=zeros,
        response_mw=zeros,
        fleet_power_w=power.sum(axis=0),
        basepoint_w=zeros,
        capacity_w=0,
        series=series,
        power_w=power,
        signal_samples=0,
        basepoint_samples=0,
    )


def _settlement_store(
    award, period_start, period_end, score_row, terms, result, trace, owners, now, used_prices
) -> Settlement:
    try:
        return _settlement_write(
            award, period_start, period_end, score_row, terms, result, trace, owners, now, used_prices
        )
    except IntegrityError:
        # Another worker settled the same award-hour meanwhile: same inputs, same figures; keep theirs.
        return Settlement.objects.get(award=award, period_start=period_start)


def _settlement_write(
    award, period_start, period_end, score_row, terms, result, trace, owners, now, used_prices
) -> Settlement:
    amounts, exact = result.amounts, result.exact
    with transaction.atomic():
        Settlement.objects.filter(award=award, period_start=period_start).delete()
        settlement = Settlement.objects.create(
            award=award,
            period_start=period_start,
            period_end=period_end,
            score=score_row,
            score_value=result.score,
            awarded_w=terms.awarded_w,
            capacity_price=terms.capacity_price,
            performance_price=terms.performance_price,
            mileage_ratio=terms.mileage_ratio,
            capacity_credit=amounts.capacity,
            performance_credit=amounts.performance,
            energy_amount=amounts.energy,
            degradation_cost=amounts.degradation,
            net=amounts.net,
            exact={
                "capacity": str(exact.capacity),
                "performance": str(exact.performance),
                "energy": str(exact.energy),
                "degradation": str(exact.degradation),
                "energy_prices": used_prices,  # [interval start, $/MWh]: the beliefs used
            },
            import_wh=sum(line.import_wh for line in result.vehicles),
            export_wh=sum(line.export_wh for line in result.vehicles),
            currency=award.product.operator.currency,
            computed_at=now,
        )
        lines = []
        for line in result.vehicles:
            series = trace.series[line.vehicle_id]
            who = owners[line.vehicle_id]
            used = series.meter_ids  # deduplicated readings read, the one in force at the start included
            lines.append(
                SettlementLine(
                    settlement=settlement,
                    station_id=series.station_pk,
                    evse_id=series.evse_id,
                    vehicle_id=who.vehicle_id,
                    owner_id=who.owner_id,
                    vehicle_ref=who.vehicle_ref,
                    owner_ref=who.owner_ref,
                    capacity_credit=line.amounts.capacity,
                    performance_credit=line.amounts.performance,
                    energy_amount=line.amounts.energy,
                    degradation_cost=line.amounts.degradation,
                    net=line.amounts.net,
                    response_wh=line.response_wh,
                    import_wh=line.import_wh,
                    export_wh=line.export_wh,
                    pack_throughput_wh=line.pack_throughput_wh,
                    meter_count=len(used),
                    duplicates_ignored=series.duplicates,
                    meter_first_id=used[0] if used else None,
                    meter_last_id=used[-1] if used else None,
                    meter_digest=series.digest,
                )
            )
        SettlementLine.objects.bulk_create(lines)
    return settlement


def regulation_hour_settle(*, period_start: datetime, location: str = "") -> list[Settlement]:
    """Score and settle every award in force for the hour from ``period_start`` (idempotent)."""
    period_start = _utc(period_start, "period_start")
    return [
        settlement_compute(award=award, period_start=period_start, location=location)
        for award in awards_in_force(at=period_start)
    ]


# --- reconciliation ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconciliationRow:
    station_pk: int
    station_id: str
    evse_id: int
    settled_import_wh: int
    settled_export_wh: int
    import_check: Reconciliation
    export_check: Reconciliation

    @property
    def agrees(self) -> bool:
        return self.import_check.agrees and self.export_check.agrees


def _register_delta(series: MeterSeries, start: datetime, end: datetime) -> tuple[int, int] | None:
    """Register deltas over ``[start, end)``, interpolated linearly at both ends from the bracketing readings."""
    t = series.times_s
    if t.size < 2 or t[0] > start.timestamp() or t[-1] < end.timestamp():
        return None
    at = np.array([start.timestamp(), end.timestamp()])
    imp = np.interp(at, t, series.values)
    exp = np.interp(at, t, series.second)
    return round(imp[1] - imp[0]), round(exp[1] - exp[0])


def reconciliation_report(*, start: datetime, end: datetime) -> list[ReconciliationRow]:
    """Per charge point: energy settled in the periods settled within ``[start, end)`` against its meter
    registers' deltas over those same periods.

    Settled energy is what the settlement lines hold (integrated from power readings); the registers are the
    meter's own energy counters, interpolated linearly at each settled period's start and end. Each period counts
    once per charge point, however many awards it was settled under. Each direction agrees within 0.1 % (or 1 Wh).
    A period whose register readings do not bracket it counts a register delta of 0, so it shows as disagreeing.
    """
    start, end = _utc(start, "start"), _utc(end, "end")
    lines = SettlementLine.objects.filter(settlement__period_start__gte=start, settlement__period_end__lte=end)
    settled: dict[tuple[int, int], list[int]] = {}
    periods: dict[tuple[int, int], set[tuple[datetime, datetime]]] = {}
    names: dict[tuple[int, int], str] = {}
    for station_pk, station_id, evse_id, imp, exp, p_start, p_end in lines.values_list(
        "station_id",
        "station__station_id",
        "evse_id",
        "import_wh",
        "export_wh",
        "settlement__period_start",
        "settlement__period_end",
    ):
        cp = (station_pk, evse_id)
        totals = settled.setdefault(cp, [0, 0])
        totals[0] += imp
        totals[1] += exp
        periods.setdefault(cp, set()).add((p_start, p_end))
        names[cp] = station_id
    margin = timedelta(seconds=POWER_MAX_AGE_S)
    registers = charge_point_registers(start=start - margin, end=end + margin, stations={cp[0] for cp in settled})
    rows = []
    for cp, (imp, exp) in sorted(settled.items()):
        reg_imp = reg_exp = 0
        series = registers.get(cp)
        for p_start, p_end in sorted(periods[cp]):
            delta = _register_delta(series, p_start, p_end) if series is not None else None
            if delta is not None:
                reg_imp, reg_exp = reg_imp + delta[0], reg_exp + delta[1]
        rows.append(
            ReconciliationRow(
                station_pk=cp[0],
                station_id=names[cp],
                evse_id=cp[1],
                settled_import_wh=imp,
                settled_export_wh=exp,
                import_check=Reconciliation(imp, reg_imp),
                export_check=Reconciliation(exp, reg_exp),
            )
        )
    return rows


def power_register_check(*, start: datetime, end: datetime) -> list[tuple[str, int, Reconciliation, Reconciliation]]:
    """Integrated power readings against register deltas per charge point, whether settled or not (diagnostics)."""
    start, end = _utc(start, "start"), _utc(end, "end")
    power = {s.charge_point: s for s in charge_point_power(start=start, end=end)}
    registers = charge_point_registers(start=start, end=end, stations={cp[0] for cp in power})
    out = []
    for cp, series in sorted(power.items()):
        reg = registers.get(cp)
        if reg is None or reg.times_s.size < 2:
            continue
        imp, exp = reconcile(
            series.times_s, series.values, reg.times_s, reg.values, reg.second, max_hold_s=POWER_MAX_AGE_S
        )
        out.append((series.station_id, series.evse_id, imp, exp))
    return out
