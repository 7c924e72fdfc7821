"""Regulation settlement from stored data (the arithmetic itself, pure, is :mod:`.settlement`).

* :func:`settlement_periods` -- the periods an award is settled over (the product's ``settlement_minutes``).
* :func:`settlement_compute` -- settle one award over one period, attributed to charge points / vehicles / owners.
* :func:`regulation_hour_settle` -- score and settle every award in force in an hour.

**Settlement periods.** PJM settles and scores regulation per hour, and so does every product by default
(``Product.settlement_minutes = 60``). A product may settle on a shorter grid (a divisor of 60 minutes, as markets
with a 15-minute settlement period do): each period is then scored on its own with PJM's method -- its rows plus
the 31 look-ahead rows, as the hour is -- and paid pro rata of its length (capacity and performance credits are
MW x hours x price x score, so four quarter-hours at one score pay exactly what the hour does). An award that
does not start or end on the grid (one taken late, after its hour began) has a first / last period from its own
start / to its own end; one shorter than :data:`MIN_PERIOD` -- too short for a PJM score, which needs a 31-row
window and its 31 look-ahead rows -- is merged into its neighbour. Prices are read for the market interval
(``MarketOperator.interval_minutes``) the period lies in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone

from markets.models import Award, Product
from markets.regulation import scoring
from markets.regulation.metering import cumulative_energy_wh, interval_energy_wh
from markets.regulation.models import (
    PerformanceScoreRecord,
    Settlement,
    SettlementLine,
)
from markets.regulation.performance import (
    RegulationTrace,
    performance_score_compute,
    power_only_trace,
    regulation_trace,
)
from markets.regulation.selectors import (
    POWER_MAX_AGE_S,
    ChargePointVehicle,
    awards_in_force,
    awards_overlapping,
    charge_point_vehicles,
    energy_prices,
    pack_history,
    regulation_price,
)
from markets.regulation.services import utc_instant
from markets.regulation.settlement import (
    DegradationCost,
    IntervalEnergy,
    PackTrace,
    RegulationTerms,
    SettlementError,
    VehicleMetering,
    settle_award_hour,
)
from markets.reserve.services import reserve_period_penalty

HOUR = timedelta(hours=1)
ROW = timedelta(seconds=scoring.SAMPLE_PERIOD_S)
#: The shortest period PJM's method can score: one 31-row window (30 scored rows) and its 31 look-ahead rows.
MIN_PERIOD = ROW * (scoring.WINDOW - 1)


def _floor(at: datetime, step: timedelta) -> datetime:
    seconds = step.total_seconds()
    return datetime.fromtimestamp(at.timestamp() // seconds * seconds, at.tzinfo)


def settlement_periods(award: Award) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` of every settlement period of ``award``, in order (see the module docstring)."""
    minutes = award.product.settlement_minutes
    if minutes < MIN_PERIOD.total_seconds() / 60 or 60 % minutes:
        raise SettlementError(f"{award.product}: a settlement period of {minutes} min does not divide the hour")
    step = timedelta(minutes=minutes)
    start, end = award.interval_start, award.interval_end
    edges = [start]
    edge = _floor(start, step) + step
    while edge < end:
        edges.append(edge)
        edge += step
    edges.append(end)
    if len(edges) > 2 and edges[1] - edges[0] < MIN_PERIOD:
        del edges[1]  # a short first stub joins the next period
    if len(edges) > 2 and edges[-1] - edges[-2] < MIN_PERIOD:
        del edges[-2]  # a short last stub joins the previous one
    return list(itertools.pairwise(edges))


def _period_of(award: Award, period_start: datetime) -> tuple[datetime, datetime]:
    for start, end in settlement_periods(award):
        if start == period_start:
            return start, end
    raise SettlementError(
        f"{period_start.isoformat()} does not start a settlement period of award {award.pk} "
        f"({award.interval_start.isoformat()} to {award.interval_end.isoformat()}, "
        f"{award.product.settlement_minutes}-min periods)"
    )


def _price_edges(
    award: Award, start: datetime, end: datetime, as_of: datetime, location: str
) -> tuple[list[datetime], dict[datetime, Decimal]]:
    """Energy price intervals over ``[start, end)``, clipped to it: a period shorter than the price interval (a
    quarter-hour of an hourly price) uses the price of the interval it lies in, keyed by the period's own start."""
    market_start = _floor(start, award.product.operator.interval)
    intervals = energy_prices(
        operator_id=award.product.operator_id, location=location, start=min(market_start, start), end=end, as_of=as_of
    )
    edges = [start]
    prices: dict[datetime, Decimal] = {}
    for interval_start, minutes, price in intervals:
        interval_end = interval_start + timedelta(minutes=minutes)
        if interval_end <= edges[-1]:
            continue  # an interval of the market interval that ends before the period starts
        if interval_start > edges[-1]:
            raise SettlementError(f"no energy price for {edges[-1].isoformat()} (next known: {interval_start})")
        prices[edges[-1]] = price
        edges.append(min(interval_end, end))
        if edges[-1] >= end:
            break
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
        pack = None
        if with_energy:
            imported, exported = interval_energy_wh(s.times_s, s.values, edges_s, max_hold_s=POWER_MAX_AGE_S)
            energy = tuple(IntervalEnergy(edges[k], int(imported[k]), int(exported[k])) for k in range(len(edges) - 1))
            pack = _pack_trace(s.times_s, s.values, who, edges[0], edges[-1])
        out.append(
            VehicleMetering(
                vehicle_id=i,  # position in trace.series: lines are mapped back to charge points by it
                owner=who.owner_id or who.owner_ref,
                response_wh=response_wh,
                energy=energy,
                charge_efficiency=who.charge_efficiency,
                discharge_efficiency=who.discharge_efficiency,
                pack=pack,
            )
        )
    return out


def _pack_trace(
    times_s: np.ndarray, power_w: np.ndarray, who: ChargePointVehicle, start: datetime, end: datetime
) -> PackTrace | None:
    """The vehicle's SoC over ``[start, end]`` at each metered power reading, from its SoC belief at ``start``
    advanced by the metered energy (``+ import x eta_c - export / eta_d``, as the fleet's beliefs are), with the
    pack temperature in force at each instant. None when no vehicle (hence no capacity or rating) is known.

    Meter resolution, not the station's whole-percent SoC: a regulation swing of a few hundred Wh is a fraction of
    a percent. A vehicle with no SoC belief starts at 0.5 (mean-SoC stress 1, the rating's own condition).
    """
    if who.vehicle_id is None or who.degradation is None or who.capacity_wh <= 0:
        return None
    start_s, end_s = start.timestamp(), end.timestamp()
    inside = times_s[(times_s > start_s) & (times_s < end_s)]
    at = np.concatenate([[start_s], inside, [end_s]])
    imported, exported = cumulative_energy_wh(times_s, power_w, at, max_hold_s=POWER_MAX_AGE_S)
    pack_wh = (imported - imported[0]) * who.charge_efficiency - (exported - exported[0]) / who.discharge_efficiency
    history = pack_history(vehicle_id=who.vehicle_id, start=start, end=end)
    soc0 = history.soc_start_wh / who.capacity_wh if history.soc_start_wh is not None else 0.5
    soc = np.clip(soc0 + pack_wh / who.capacity_wh, 0.0, 1.0)
    if history.temperature_c:
        held = np.searchsorted(np.asarray(history.temperature_times_s), at, side="right") - 1
        temps = np.asarray(history.temperature_c)[np.clip(held, 0, None)]
    else:
        temps = np.full(at.shape, who.pack_temperature_c)
    return PackTrace(
        soc_fraction=tuple(float(x) for x in soc),
        temperature_c=tuple(float(x) for x in temps),
        capacity_wh=who.capacity_wh,
        params=who.degradation,
    )


def settlement_compute(
    *,
    award: Award,
    period_start: datetime,
    location: str = "",
    degradation: DegradationCost | None = None,
    stations: Iterable[int] | None = None,
    recompute: bool = False,
) -> Settlement:
    """Settle one award over the settlement period from ``period_start`` (an hour unless the product settles on a
    shorter grid: :func:`settlement_periods`); stored with its vehicle lines (returned if stored).

    Regulation awards are paid at the period's performance score (computed if not yet stored); other products at 1.
    Prices: the newest :class:`RegulationPrice` belief for the market interval the period lies in (capacity price
    defaults to the award's clearing price) and the :class:`EnergyPrice` intervals covering the period. Raises
    :class:`SettlementError` for missing inputs rather than settling on a guess.
    """
    period_start = utc_instant(period_start, "period_start")
    if not (award.interval_start <= period_start < award.interval_end):
        raise SettlementError(f"the period from {period_start.isoformat()} is outside award {award.pk}'s interval")
    period_start, period_end = _period_of(award, period_start)
    period_rows = int((period_end - period_start) / ROW)
    if period_end - period_start != ROW * period_rows:
        raise SettlementError(f"the period from {period_start.isoformat()} is not a whole number of 10-s rows")
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
        market_interval = _floor(period_start, product.operator.interval)
        price = regulation_price(product=product, interval_start=market_interval, as_of=now)
        if price is None:
            raise SettlementError(f"no regulation prices (RMPCP, mileage ratio) for {market_interval.isoformat()}")
        capacity_price = price.capacity_price if price.capacity_price is not None else award.clearing_price
        performance_price, mileage_ratio = price.performance_price, price.mileage_ratio
    # Reserve: the shortfall penalties of the events starting in the period (they wait for their measurement).
    penalty = reserve_period_penalty(award=award, period_start=period_start, period_end=period_end, now=now)
    with_energy = _energy_award(award, period_start)
    edges, prices = _price_edges(award, period_start, period_end, now, location) if with_energy else ([], {})
    # PJM: an hour is 391 rows (360 scored + 31 look-ahead); a shorter period is its rows + the same look-ahead.
    rows = period_rows + scoring.LOOKAHEAD_ROWS if regulated else period_rows + 1
    scored = period_rows
    hourly = period_end - period_start == HOUR
    if regulated:
        # One read of the hour serves both the score (signal scaled by the portfolio's awarded capacity, as the
        # operator scores it) and the metering of this award.
        trace = regulation_trace(
            product=product, portfolio=award.portfolio, start=period_start, rows=rows, stations=stations
        )
        score_row = performance_score_compute(
            product=product,
            portfolio=award.portfolio,
            period_start=period_start,
            kind=PerformanceScoreRecord.Kind.HOURLY if hourly else PerformanceScoreRecord.Kind.INTERVAL,
            rows=rows,
            trace=trace,
        )
        score = score_row.composite
    else:
        trace = power_only_trace(period_start, rows, award.portfolio, stations)
    owners = charge_point_vehicles(series=trace.series, start=period_start, end=period_end)
    metering = _metering(trace, owners, edges, with_energy, scored)
    terms = RegulationTerms(
        awarded_w=award.awarded_w,
        hours=Decimal(period_rows) / Decimal(360),  # the period's length in hours, exactly (10-s rows)
        capacity_price=capacity_price,
        performance_price=performance_price,
        mileage_ratio=mileage_ratio,
    )
    result = settle_award_hour(
        terms=terms, score=score, vehicles=metering, energy_prices=prices, degradation=degradation, penalty=penalty
    )
    used_prices = [[start.isoformat(), str(price)] for start, price in sorted(prices.items())]
    return _settlement_store(award, period_start, period_end, score_row, terms, result, trace, owners, now, used_prices)


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
            penalty=amounts.penalty,
            net=amounts.net,
            exact={
                "capacity": str(exact.capacity),
                "performance": str(exact.performance),
                "energy": str(exact.energy),
                "degradation": str(exact.degradation),
                "penalty": str(exact.penalty),
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
                    penalty=line.amounts.penalty,
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


def settlement_periods_between(*, start: datetime, end: datetime) -> list[tuple[Award, datetime, datetime]]:
    """(award, period start, period end) of every settlement period starting in ``[start, end)``, by award."""
    out: list[tuple[Award, datetime, datetime]] = []
    for award in awards_overlapping(start=start, end=end):
        out.extend((award, s, e) for s, e in settlement_periods(award) if start <= s < end)
    return out


def regulation_hour_settle(*, period_start: datetime, location: str = "") -> list[Settlement]:
    """Score and settle every settlement period that starts in the hour from ``period_start`` (for hourly products:
    every award in force that hour) (idempotent)."""
    period_start = utc_instant(period_start, "period_start")
    return [
        settlement_compute(award=award, period_start=start, location=location)
        for award, start, _ in settlement_periods_between(start=period_start, end=period_start + HOUR)
    ]
