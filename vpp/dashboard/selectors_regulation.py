"""Regulation now, for the dashboard: per awarded portfolio the user may see, the signal, the fleet setpoint dispatch
asked for and the fleet power the meters measured over the last minutes, and the current hour's running score.

The running score is PJM's score (``markets.regulation.scoring``) over the rows of the hour so far, read from
stored data exactly as the hourly score will be (``markets.regulation.performance.regulation_trace``); it needs
61 rows (10 min 10 s): a 31-row window and the 31 look-ahead rows after it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from fleet.selectors import portfolios_for
from markets.models import Product
from markets.regulation import scoring
from markets.regulation.models import RegulationSignal
from markets.regulation.performance import regulation_trace
from markets.regulation.selectors import awards_in_force, charge_point_power, portfolio_stations
from markets.regulation.services import RegulationError
from vpp.models import Dispatch

WINDOW = timedelta(minutes=10)
#: The fewest 10-s rows PJM's score is defined on: one 31-row window and the 31 look-ahead rows after it.
MIN_ROWS = scoring.LOOKAHEAD_ROWS + scoring.WINDOW - 1
GRID_S = 2.0  # the measured power is put on the signal's 2-s grid
SIGNAL_GAP_S = 10.0  # a longer pause breaks the signal: the score restarts after it
POWER_HOLD_S = 10.0


def regulation_portfolios(*, user: AbstractBaseUser | AnonymousUser, at: datetime) -> list[tuple[Product, str, int]]:
    """(product, portfolio, capacity W) of the regulation awards in force at ``at`` that the user may see (an
    operator: all; a member: their organisations' fleet portfolios)."""
    visible = portfolios_for(user)
    capacity: dict[tuple[int, str], int] = defaultdict(int)
    products: dict[int, Product] = {}
    for award in awards_in_force(at=at):
        if award.product.kind != Product.Kind.REGULATION:
            continue
        if visible is not None and award.portfolio not in visible:
            continue
        capacity[(award.product_id, award.portfolio)] += award.awarded_w
        products[award.product_id] = award.product
    return [(products[pid], portfolio, w) for (pid, portfolio), w in sorted(capacity.items())]


def regulation_now(
    *,
    user: AbstractBaseUser | AnonymousUser,
    at: datetime,
    since: datetime | None = None,
    with_score: bool = True,
) -> list[dict[str, Any]]:
    """One entry per awarded portfolio: the series from ``since`` (default: the last 10 minutes) to ``at``."""
    start = max(since, at - WINDOW) if since is not None else at - WINDOW
    out = []
    for product, portfolio, capacity_w in regulation_portfolios(user=user, at=at):
        entry = regulation_series(product=product, portfolio=portfolio, start=start, end=at)
        entry.update(
            {
                "product": f"{product.operator.code}:{product.code}",
                "portfolio": portfolio,
                "capacity_kw": capacity_w / 1000,
            }
        )
        if with_score:
            entry["running_score"] = running_score(product=product, portfolio=portfolio, at=at, capacity_w=capacity_w)
        out.append(entry)
    return out


def regulation_series(*, product: Product, portfolio: str, start: datetime, end: datetime) -> dict[str, Any]:
    signal = list(
        RegulationSignal.objects.filter(product=product, portfolio=portfolio, at__gt=start, at__lte=end)
        .order_by("at")
        .values_list("at", "value")
    )
    dispatches = list(
        Dispatch.objects.filter(product=product, portfolio=portfolio, signal_at__gt=start, signal_at__lte=end)
        .order_by("signal_at")
        .values_list("signal_at", "setpoint_w", "basepoint_w")
    )
    stations = portfolio_stations(portfolio=portfolio, start=start, end=end)
    grid = np.arange(np.ceil(start.timestamp() / GRID_S) * GRID_S, end.timestamp(), GRID_S)
    power = np.zeros(grid.shape)
    seen = np.zeros(grid.shape, dtype=bool)
    for series in charge_point_power(start=start, end=end, stations=stations, lookback_s=POWER_HOLD_S):
        held = scoring.sample_hold(series.times_s, series.values, grid, max_age_s=POWER_HOLD_S)
        seen |= ~np.isnan(held)
        power += np.nan_to_num(held, nan=0.0)
    measured = [
        (t, round(p / 1000, 3)) for t, p, ok in zip(grid.tolist(), power.tolist(), seen.tolist(), strict=True) if ok
    ]
    return {
        "signal": {"t": [a.isoformat() for a, _ in signal], "v": [float(v) for _, v in signal]},
        "setpoint_kw": {"t": [a.isoformat() for a, _, _ in dispatches], "v": [s / 1000 for _, s, _ in dispatches]},
        "basepoint_kw": dispatches[-1][2] / 1000 if dispatches else None,
        "measured_kw": {"t": [_iso(t) for t, _ in measured], "v": [v for _, v in measured]},
    }


def running_score(*, product: Product, portfolio: str, at: datetime, capacity_w: int) -> dict[str, Any]:
    """PJM's score over the current hour's rows so far (``available`` False, with why, until it can be computed)."""
    hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    instants = list(
        RegulationSignal.objects.filter(product=product, portfolio=portfolio, at__gte=hour, at__lte=at)
        .order_by("at")
        .values_list("at", flat=True)
    )
    # Regulation that began during the hour (the demo just started, or the signal stopped and resumed) is scored
    # from the first 10-s row of its latest unbroken stretch.
    first = instants[0] if instants else None
    for before, after in itertools.pairwise(instants):
        if (after - before).total_seconds() > SIGNAL_GAP_S:
            first = after
    start = hour
    if first is not None and first > hour:
        step = scoring.SAMPLE_PERIOD_S
        start = datetime.fromtimestamp(-(-first.timestamp() // step) * step, UTC)
    rows = int((at - start).total_seconds() // scoring.SAMPLE_PERIOD_S)
    rows = min(rows, scoring.HOURLY_ROWS)
    base = {"hour": hour.isoformat(), "from": start.isoformat(), "rows": rows, "pass_mark": scoring.PASS_MARK}
    if rows < MIN_ROWS:
        wait = (MIN_ROWS - rows) * scoring.SAMPLE_PERIOD_S
        return base | {"available": False, "why": f"a score needs 10 min 10 s of regulation: {wait} s to go"}
    try:
        trace = regulation_trace(product=product, portfolio=portfolio, start=start, rows=rows, capacity_w=capacity_w)
        score = scoring.performance_score(trace.reg_mw, trace.response_mw)
    except (RegulationError, scoring.ScoringError) as exc:
        return base | {"available": False, "why": str(exc)}
    return base | {
        "available": True,
        "accuracy": round(score.accuracy, 3),
        "delay": round(score.delay, 3),
        "precision": round(score.precision, 3),
        "composite": round(score.composite, 3),
        "passed": score.passed,
    }


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()
