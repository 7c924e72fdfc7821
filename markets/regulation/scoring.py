"""PJM regulation performance score, exactly as PJM's scoring template computes it.

Pure numpy, no Django. The method is transcribed in ``/work/shared/reference/pjm-performance-score.md`` (from the
cell formulas of PJM's "40-minute performance score template"); every rule below cites that transcription:

* Inputs are one row per 10 s: ``reg`` (signal in MW = AREG x normalised signal) and ``resp`` (regulation response
  in MW, in the signal's sign convention). Slopes are taken against the sample index, not seconds.
* With ``n`` rows the last 31 are look-ahead only: ``N = n - 31`` rows are scored (hourly template: 391 rows, 360
  scored).
* Accuracy: for each 31-sample window ending at ``e = 30 .. N`` and each shift ``k = 0 .. 29`` the window value is
  ``max(0, correl)`` when both slopes exceed 0.05 in magnitude, else ``1 - |slope_L - slope_O|`` (not clipped, as in
  the template); window accuracy is the best value over the shifts, ``k*`` the first shift reaching it.
* Delay: ``d = max(k* - 1, 0) * 10`` s (Manual 12's 10 s allowance), window delay score ``|300 - d| / 300``.
* Precision (template's "current method"): ``min(max(1 - |resp - reg| / mean|reg|, 0), 1)`` averaged over the N
  scored rows, the mean absolute signal taken over the same rows.
* Composite = mean of the three; pass mark 0.75.

One deliberate numerical choice: "the first shift reaching the maximum" is decided with a tolerance of 1e-12 on
the window values. Different summation orders (Excel, this vectorised code, a plain loop) give correlations of
identical series as 0.9999999999999998 or 1.0000000000000002; without the tolerance the chosen ``k*`` -- and so the
delay score -- would depend on rounding noise rather than on the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

SAMPLE_PERIOD_S = 10
WINDOW = 31
SHIFTS = 30  # k = 0 .. 29, i.e. 0 .. 290 s
SLOPE_THRESHOLD = 0.05
DELAY_HORIZON_S = 300
PASS_MARK = 0.75
HOURLY_ROWS = 391  # 360 scored + 31 look-ahead
LOOKAHEAD_ROWS = WINDOW
TIE_TOLERANCE = 1e-12

_X = np.arange(WINDOW, dtype=float) - (WINDOW - 1) / 2  # centred sample index: slope is shift-invariant in x
_SXX = float(np.sum(_X * _X))


class ScoringError(ValueError):
    """The series cannot be scored (too short, mismatched, not finite, or a signal that is zero throughout)."""


@dataclass(frozen=True, slots=True)
class PerformanceScore:
    """One performance score: the three components, the composite, and what they were computed over."""

    accuracy: float
    delay: float
    precision: float
    composite: float
    scored_rows: int
    windows: int

    @property
    def passed(self) -> bool:
        return self.composite >= PASS_MARK


@dataclass(frozen=True, slots=True)
class WindowDetail:
    """Per-window results, for reports and for checking against the template sheet row by row."""

    accuracy: NDArray[np.float64]  # best value over shifts, one per window
    best_shift: NDArray[np.int64]  # k*, first shift reaching the best value
    delay: NDArray[np.float64]  # |300 - d| / 300


def _validate(reg: ArrayLike, resp: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    reg_a = np.asarray(reg, dtype=float)
    resp_a = np.asarray(resp, dtype=float)
    if reg_a.ndim != 1 or reg_a.shape != resp_a.shape:
        raise ScoringError(f"signal and response must be 1-D and of equal length, got {reg_a.shape} and {resp_a.shape}")
    minimum = LOOKAHEAD_ROWS + WINDOW - 1  # N >= 30 gives one window
    if reg_a.size < minimum:
        raise ScoringError(f"need at least {minimum} rows of 10-s samples (31 look-ahead + a window), got {reg_a.size}")
    if not (np.all(np.isfinite(reg_a)) and np.all(np.isfinite(resp_a))):
        raise ScoringError("signal and response must be finite (fill gaps before scoring)")
    return reg_a, resp_a


def _slopes(windows: NDArray[np.float64]) -> NDArray[np.float64]:
    """Least-squares slope of each window (last axis) against the sample index, like Excel SLOPE."""
    return (windows @ _X) / _SXX


def window_details(reg: ArrayLike, resp: ArrayLike) -> WindowDetail:
    """Accuracy and delay of every 31-sample window (``e = 30 .. N``), vectorised over windows and shifts."""
    reg_a, resp_a = _validate(reg, resp)
    n_scored = reg_a.size - LOOKAHEAD_ROWS
    n_windows = n_scored - (WINDOW - 1) + 1  # window ends e = 30 .. N inclusive
    sig = np.lib.stride_tricks.sliding_window_view(reg_a, WINDOW)[:n_windows]  # (W, 31)
    all_resp = np.lib.stride_tricks.sliding_window_view(resp_a, WINDOW)
    starts = np.arange(n_windows)[:, None] + np.arange(SHIFTS)[None, :]
    shifted = all_resp[starts]  # (W, 30, 31): response window shifted later by k samples

    slope_sig = _slopes(sig)[:, None]  # (W, 1)
    slope_resp = _slopes(shifted)  # (W, 30)
    sig_c = sig - sig.mean(axis=1, keepdims=True)
    resp_c = shifted - shifted.mean(axis=2, keepdims=True)
    cov = np.einsum("wj,wkj->wk", sig_c, resp_c)
    var_sig = np.einsum("wj,wj->w", sig_c, sig_c)[:, None]
    var_resp = np.einsum("wkj,wkj->wk", resp_c, resp_c)
    steep = (np.abs(slope_sig) > SLOPE_THRESHOLD) & (np.abs(slope_resp) > SLOPE_THRESHOLD)
    with np.errstate(divide="ignore", invalid="ignore"):
        correl = cov / np.sqrt(var_sig * var_resp)
    values = np.where(steep, np.maximum(correl, 0.0), 1.0 - np.abs(slope_sig - slope_resp))

    best = values.max(axis=1)
    best_shift = np.argmax(values >= (best[:, None] - TIE_TOLERANCE), axis=1).astype(np.int64)
    delay_s = np.maximum(best_shift - 1, 0) * SAMPLE_PERIOD_S
    delay = np.abs(DELAY_HORIZON_S - delay_s) / DELAY_HORIZON_S
    return WindowDetail(accuracy=best, best_shift=best_shift, delay=delay)


def precision_score(reg: ArrayLike, resp: ArrayLike) -> float:
    """Precision over the scored rows (the first ``n - 31``), current method: error relative to mean |signal|."""
    reg_a, resp_a = _validate(reg, resp)
    n_scored = reg_a.size - LOOKAHEAD_ROWS
    reg_s, resp_s = reg_a[:n_scored], resp_a[:n_scored]
    mean_abs = float(np.mean(np.abs(reg_s)))
    if mean_abs == 0.0:
        raise ScoringError("the signal is zero over every scored row: precision is undefined (template: #DIV/0!)")
    per_row = np.clip(1.0 - np.abs(resp_s - reg_s) / mean_abs, 0.0, 1.0)
    return float(per_row.mean())


def performance_score(reg: ArrayLike, resp: ArrayLike) -> PerformanceScore:
    """Score a response against a signal, both in MW on the same 10-s rows (``n`` rows, ``n - 31`` scored).

    For an hourly score pass the 391 rows starting at the top of the hour (the hour plus 5 min 10 s look-ahead).
    Raises :class:`ScoringError` for input the template cannot score.
    """
    detail = window_details(reg, resp)
    accuracy = float(detail.accuracy.mean())
    delay = float(detail.delay.mean())
    precision = precision_score(reg, resp)
    return PerformanceScore(
        accuracy=accuracy,
        delay=delay,
        precision=precision,
        composite=(accuracy + delay + precision) / 3.0,
        scored_rows=len(np.asarray(reg)) - LOOKAHEAD_ROWS,
        windows=int(detail.accuracy.size),
    )


def mileage(signal: ArrayLike) -> float:
    """Regulation mileage: the sum of absolute changes between consecutive signal values (same unit as the signal)."""
    values = np.asarray(signal, dtype=float)
    if values.size < 2:
        return 0.0
    return float(np.abs(np.diff(values)).sum())


# --- Alignment of raw series onto the 10-s scoring rows ---------------------------------------------------------


def scoring_grid(start_s: float, rows: int, period_s: float = SAMPLE_PERIOD_S) -> NDArray[np.float64]:
    """Times (s) of ``rows`` scoring rows from ``start_s`` on: ``start_s + period_s * i``."""
    return start_s + period_s * np.arange(rows, dtype=float)


def sample_hold(times_s: ArrayLike, values: ArrayLike, grid_s: ArrayLike, *, max_age_s: float) -> NDArray[np.float64]:
    """The value in force at each grid instant: the last sample at or before it, NaN if none within ``max_age_s``.

    This is how a 10-s scan reads a 2-s signal (it lands on every fifth value) and how irregular meter readings
    (1-2 s, sometimes late or missing) are put on the signal's rows without looking into the future. ``times_s``
    must be sorted; equal timestamps keep the last value given.
    """
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    g = np.asarray(grid_s, dtype=float)
    if t.shape != v.shape or t.ndim != 1:
        raise ScoringError("times and values must be 1-D and of equal length")
    if t.size and np.any(np.diff(t) < 0):
        raise ScoringError("sample times must be sorted")
    out = np.full(g.shape, np.nan)
    if t.size == 0:
        return out
    pos = np.searchsorted(t, g, side="right") - 1
    ok = pos >= 0
    ok[ok] &= (g[ok] - t[pos[ok]]) <= max_age_s
    out[ok] = v[pos[ok]]
    return out


def align_signal(
    times_s: ArrayLike, normalised: ArrayLike, grid_s: ArrayLike, *, capacity_mw: float, max_age_s: float = 10.0
) -> NDArray[np.float64]:
    """The signal in MW on the scoring rows: ``AREG x s`` with ``s`` the value in force at each row."""
    held = sample_hold(times_s, normalised, grid_s, max_age_s=max_age_s)
    if np.any(np.isnan(held)):
        missing = int(np.isnan(held).sum())
        raise ScoringError(f"the signal has no value within {max_age_s} s at {missing} scoring rows")
    return capacity_mw * held


def align_response(
    series: list[tuple[ArrayLike, ArrayLike]], grid_s: ArrayLike, *, max_age_s: float = 10.0
) -> NDArray[np.float64]:
    """Fleet response on the scoring rows: the sum over resources of each one's value in force at the row.

    ``series`` holds ``(times_s, response)`` per resource (vehicle), response already in the signal's convention
    and unit. A resource with no reading within ``max_age_s`` of a row contributes nothing at that row: missing
    telemetry is never credited as response.
    """
    grid = np.asarray(grid_s, dtype=float)
    total = np.zeros(grid.shape)
    for times, values in series:
        total += np.nan_to_num(sample_hold(times, values, grid, max_age_s=max_age_s), nan=0.0)
    return total
