"""Regulation performance from stored data: signal and measured fleet response on the 10-s scoring rows, and the
hourly / test performance score (:mod:`.scoring` does the arithmetic).

* :func:`regulation_trace` -- signal, basepoint and meter values on the scoring grid (charts, replay, scoring).
* :func:`power_only_trace` -- the meter values alone, for products with no signal (reserve, peak shaving).
* :func:`performance_score_compute` -- score an hour (391 rows) or a test period; stored, idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
from django.utils import timezone
from numpy.typing import NDArray

from markets.models import Product
from markets.regulation import scoring
from markets.regulation.models import (
    PerformanceScoreRecord,
)
from markets.regulation.selectors import (
    POWER_MAX_AGE_S,
    MeterSeries,
    awarded_capacity_w,
    basepoint_values,
    charge_point_power,
    portfolio_stations,
    reserve_deployed_w,
    signal_values,
)
from markets.regulation.services import RegulationError, utc_instant

ROW = timedelta(seconds=scoring.SAMPLE_PERIOD_S)
SIGNAL_MAX_AGE_S = 10.0  # the operator sends every 2 s; a row with no value for 10 s cannot be scored


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
    start = utc_instant(start, "start")
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
    # A reserve event lowers the fleet power asked for by its W on top of regulation (dispatch: basepoint - signal x
    # capacity - reserve): regulation's response is measured around basepoint - reserve while one is in force.
    basepoint = np.nan_to_num(basepoint, nan=0.0) - reserve_deployed_w(portfolio=portfolio, grid_s=grid)
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
    period_start = utc_instant(period_start, "period_start")
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
            "reserve": "reserve events in force lower the basepoint by their W",
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


def power_only_trace(start: datetime, rows: int, portfolio: str, stations: Iterable[int] | None) -> RegulationTrace:
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
