"""Regulation replay results, read back from what is stored: one row per signal value (dispatch records and the
stations' MeterValues), the CSV, and the PJM performance score (``markets.regulation.scoring``) over the replay.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from chargers.models import MeterValue, Station
from markets.models import Product
from markets.regulation import scoring
from markets.regulation.selectors import charge_point_power
from vpp.models import Dispatch
from vpp.replay.harness import ReplayError

SOC_MAX_AGE_S = 30.0
POWER_MAX_AGE_S = 10.0


@dataclass
class ReplayRows:
    times_s: np.ndarray
    signal: np.ndarray
    setpoint_w: np.ndarray
    basepoint_w: np.ndarray
    fleet_power_w: np.ndarray
    min_soc_pct: np.ndarray
    capacity_w: int
    meter_values: int
    duplicates: int


def _held(times: np.ndarray, values: np.ndarray, grid: np.ndarray, max_age_s: float) -> np.ndarray:
    return scoring.sample_hold(times, values, grid, max_age_s=max_age_s)


def replay_rows(
    *,
    product: Product,
    portfolio: str,
    station_ids: list[str],
    times_s: np.ndarray,
    signal: np.ndarray,
    sample_at_s: float = 0.0,
) -> ReplayRows:
    """One row per signal value; the fleet's metered response (power, lowest SoC) is read ``sample_at_s`` after
    the value's instant (0: at the instant itself, when the answer to that value cannot have been metered yet)."""
    start = datetime.fromtimestamp(float(times_s[0]), UTC)
    end = datetime.fromtimestamp(float(times_s[-1]) + 1.0 + sample_at_s, UTC)
    sampled_s = times_s + sample_at_s
    dispatches = list(
        Dispatch.objects.filter(
            product=product, portfolio=portfolio, signal_at__gte=start - timedelta(seconds=1), signal_at__lt=end
        )
        .order_by("signal_at")
        .values_list("signal_at", "setpoint_w", "basepoint_w", "capacity_w")
    )
    d_t = np.array([d[0].timestamp() for d in dispatches], dtype=float)
    # The dispatch of a value is stored at that value's instant: hold on the grid with a 1-ms guard against the
    # rounding of instants through ISO strings and the database.
    setpoint = _held(d_t, np.array([d[1] for d in dispatches], dtype=float), times_s + 0.001, 1e9)
    basepoint = _held(d_t, np.array([d[2] for d in dispatches], dtype=float), times_s + 0.001, 1e9)
    capacity = max((d[3] for d in dispatches), default=0)
    pks = list(Station.objects.filter(station_id__in=station_ids).values_list("pk", flat=True))
    series = charge_point_power(start=start, end=end, stations=pks)
    power = np.zeros(times_s.shape)
    for s in series:
        power += np.nan_to_num(_held(s.times_s, s.values, sampled_s, POWER_MAX_AGE_S), nan=0.0)
    min_soc = np.full(times_s.shape, np.nan)
    soc_rows = (
        MeterValue.objects.filter(
            station_id__in=pks,
            measurand="SoC",
            timestamp__gte=start - timedelta(seconds=SOC_MAX_AGE_S),
            timestamp__lt=end,
        )
        .order_by("station_id", "timestamp", "id")
        .values_list("station_id", "timestamp", "value")
    )
    by_station: dict[int, list[tuple[float, int]]] = {}
    for station_pk, ts, value in soc_rows:
        by_station.setdefault(station_pk, []).append((ts.timestamp(), value))
    for readings in by_station.values():
        at, values = np.array([r[0] for r in readings]), np.array([r[1] for r in readings], dtype=float)
        held = _held(at, values, sampled_s, SOC_MAX_AGE_S)
        min_soc = np.fmin(min_soc, held)
    return ReplayRows(
        times_s=times_s,
        signal=signal,
        setpoint_w=setpoint,
        basepoint_w=basepoint,
        fleet_power_w=power,
        min_soc_pct=min_soc,
        capacity_w=int(capacity),
        meter_values=sum(len(s.meter_ids) for s in series),
        duplicates=sum(s.duplicates for s in series),
    )


def rows_write(path: str | Path, rows: ReplayRows) -> int:
    """One CSV row per signal value. Power columns in kW, + charging (the fleet's grid power)."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "time",
                "signal",
                "fleet_setpoint_kw",
                "fleet_response_kw",
                "min_soc_pct",
                "basepoint_kw",
                "regulation_requested_kw",
                "regulation_delivered_kw",
            ]
        )
        for i, t in enumerate(rows.times_s.tolist()):
            base = rows.basepoint_w[i]
            writer.writerow(
                [
                    datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds"),
                    f"{rows.signal[i]:.5f}",
                    _kw(rows.setpoint_w[i]),
                    _kw(rows.fleet_power_w[i]),
                    "" if math.isnan(rows.min_soc_pct[i]) else int(rows.min_soc_pct[i]),
                    _kw(base),
                    _kw(rows.signal[i] * rows.capacity_w),
                    _kw(base - rows.fleet_power_w[i]),
                ]
            )
    return len(rows.times_s)


def _kw(watts: float) -> str:
    return "" if math.isnan(watts) else f"{watts / 1000:.3f}"


def tracking(rows: ReplayRows) -> tuple[float, float]:
    """(amplitude, rms error W): how much of the requested regulation the fleet delivered (least-squares fit of
    delivered = amplitude x requested, 1.0 = exact) and the rms of delivered - requested, over every row."""
    requested = rows.signal * rows.capacity_w
    delivered = rows.basepoint_w - rows.fleet_power_w
    ok = np.isfinite(requested) & np.isfinite(delivered)
    energy = float(requested[ok] @ requested[ok])
    amplitude = float(delivered[ok] @ requested[ok]) / energy if energy > 0 else math.nan
    rms = float(np.sqrt(np.mean((delivered[ok] - requested[ok]) ** 2))) if ok.any() else math.nan
    return amplitude, rms


def replay_score(rows: ReplayRows, *, speed: float) -> scoring.PerformanceScore:
    """PJM score on 10-s rows of signal time (10/speed s of wall time), from the stored rows above.

    Regulation requested = capacity x signal; response = basepoint - metered fleet power (PJM: + = up).
    """
    period = scoring.SAMPLE_PERIOD_S / speed
    t = rows.times_s
    grid = scoring.scoring_grid(float(t[0]), int((t[-1] - t[0]) // period) + 1, period)
    if grid.size <= scoring.LOOKAHEAD_ROWS:
        raise ReplayError(
            f"{grid.size} scoring rows: a score needs more than {scoring.LOOKAHEAD_ROWS} (> 5 min of signal)"
        )
    reg = scoring.sample_hold(t, rows.signal, grid, max_age_s=period) * rows.capacity_w / 1e6
    response = scoring.sample_hold(t, rows.basepoint_w - rows.fleet_power_w, grid, max_age_s=period) / 1e6
    return scoring.performance_score(np.nan_to_num(reg), np.nan_to_num(response))
