"""Closed-loop tracking for a dispatcher: each vehicle's response gain and the fleet correction, kept in memory.

The arithmetic is :mod:`fleet.numerics.response`; this is its bookkeeping, with no I/O and no clock reads (every
instant is passed in, epoch seconds). A :class:`ResponseTracker` belongs to one dispatcher and is fed by it:

* :meth:`install` with each reloaded fleet state: a vehicle keeps its gain while it stays in the same session on the
  same EVSE; a new vehicle, a new transaction (reconnect, new plug-in) or another EVSE starts again from ``g = 1``;
* :meth:`plan` before each allocation: the gains and the fleet correction for this dispatch;
* :meth:`sent` after the fan-out: the command each station accepted, and when its answer arrived;
* :meth:`readings` with committed meter values (the ``telemetry`` feed): metered net power (import - export) of a
  station, paired with the command in force when it was *taken* (the station's timestamp) -- only once that
  command had settled (``settle_s`` after the station answered it) and before the next dispatch went out; a
  reading older than ``max_age_s`` or stamped in the future is ignored (stale feed, skewed clock);
* :meth:`forget` when a station connects or disconnects: its gain and commands start again.

A station whose command was not accepted keeps no command here (what it does is unknown until the next one), so
nothing is learnt from it. With no fresh reading the fleet residual is 0 and the correction decays to 0: open
loop is the fallback whenever the feed is lost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from chargers.fanout import CommandResult
from fleet.numerics.allocation import Allocation
from fleet.numerics.arrays import PowerBounds
from fleet.numerics.response import (
    DEFAULT,
    FloatArray,
    TrackingSettings,
    correction_clip,
    correction_step,
    gain_estimate,
    gain_prior,
    gain_update,
    usable,
)

LOG = logging.getLogger(__name__)
FUTURE_TOLERANCE_S = 1.0  # a reading stamped this far past the server's clock is still believed (clock jitter)
Key = tuple[str, int, str, int]  # station id, EVSE id, transaction id, vehicle id
POWER_IMPORT, POWER_EXPORT = "Power.Active.Import", "Power.Active.Export"  # at the outlet, W


@dataclass(frozen=True, slots=True)
class Reading:
    """One metered net grid power (W, + import) of a station's EVSE, taken at ``at`` (epoch s, the station's clock)."""

    station_id: str
    at: float
    power_w: float
    evse_id: int = 1


def power_reading(station_id: str, update: dict[str, Any], values: dict[str, Any]) -> Reading | None:
    """The net grid power (import - export, W) of a ``telemetry`` meter update, None if it carries none in W."""
    units = update.get("units") or {}
    imp, exp = values.get(POWER_IMPORT), values.get(POWER_EXPORT)
    if (imp is None and exp is None) or any(units.get(name, "W") != "W" for name in (POWER_IMPORT, POWER_EXPORT)):
        return None
    try:
        at = datetime.fromisoformat(update["timestamp"]).timestamp()
        return Reading(station_id, at, float(imp or 0) - float(exp or 0), int(update.get("evse_id", 1)))
    except (KeyError, TypeError, ValueError):
        return None


class _Commands:
    """The command each row had accepted in one dispatch (NaN where none): power, bounds, gain, answer instant."""

    def __init__(self, n: int) -> None:
        self.power = np.full(n, np.nan)
        self.lo = np.full(n, np.nan)
        self.hi = np.full(n, np.nan)
        self.gain = np.ones(n)
        self.answered = np.full(n, np.nan)
        self.until = np.full(n, np.inf)  # the next dispatch to this row went out then: the command ended

    def take(self, rows: np.ndarray, other: _Commands, other_rows: np.ndarray) -> None:
        for name in ("power", "lo", "hi", "gain", "answered", "until"):
            getattr(self, name)[rows] = getattr(other, name)[other_rows]


class ResponseTracker:
    """Per-vehicle response gains and the fleet correction of one dispatcher (module docstring)."""

    def __init__(self, settings: TrackingSettings = DEFAULT) -> None:
        self.settings = settings
        self._keys: list[Key] = []
        self._row_of: dict[tuple[str, int], int] = {}  # (station id, EVSE id) -> row
        self._num, self._den = gain_prior(0, settings)
        self._current = _Commands(0)  # the newest accepted command per row
        self._previous = _Commands(0)  # the one before it (a reading taken before the newest had settled)
        self._residual = np.zeros(0)  # metered - expected at the newest settled reading, W
        self._residual_at = np.full(0, -np.inf)
        self.correction_w = 0.0
        self._last: tuple[float, float] | None = None  # (requested, expected) of the last dispatch sent
        self.samples = 0  # usable samples learnt from (for logs and tests)

    def __len__(self) -> int:
        return len(self._keys)

    # --- fleet membership ----------------------------------------------------------------------------------------

    def install(self, keys: Sequence[Key]) -> None:
        """The rows of a newly loaded fleet state; what is known of a (station, EVSE, transaction, vehicle) is kept."""
        old = {key: row for row, key in enumerate(self._keys)}
        n = len(keys)
        num, den = gain_prior(n, self.settings)
        current, previous = _Commands(n), _Commands(n)
        residual, residual_at = np.zeros(n), np.full(n, -np.inf)
        pairs = [(row, old[key]) for row, key in enumerate(keys) if key in old]
        if pairs:
            new_rows = np.array([p[0] for p in pairs])
            old_rows = np.array([p[1] for p in pairs])
            num[new_rows], den[new_rows] = self._num[old_rows], self._den[old_rows]
            current.take(new_rows, self._current, old_rows)
            previous.take(new_rows, self._previous, old_rows)
            residual[new_rows], residual_at[new_rows] = self._residual[old_rows], self._residual_at[old_rows]
        self._keys = list(keys)
        self._row_of = {(key[0], key[1]): row for row, key in enumerate(self._keys)}
        self._num, self._den = num, den
        self._current, self._previous = current, previous
        self._residual, self._residual_at = residual, residual_at

    def forget(self, station_id: str) -> None:
        """The station (dis)connected: its vehicles' gains and commands start again (a new session may follow)."""
        weight = self.settings.prior_w * self.settings.prior_w
        for row, key in enumerate(self._keys):
            if key[0] == station_id:
                self._num[row] = self._den[row] = weight
                for commands in (self._current, self._previous):
                    commands.power[row] = np.nan
                self._residual[row], self._residual_at[row] = 0.0, -np.inf

    # --- the dispatch -------------------------------------------------------------------------------------------

    def gains(self) -> FloatArray:
        return gain_estimate(self._num, self._den)

    def residual_w(self, now: float) -> float:
        """Metered minus expected delivery, summed over the vehicles with a fresh settled reading."""
        fresh = now - self._residual_at <= self.settings.max_age_s
        return float(self._residual[fresh].sum())

    def plan(self, *, now: float, setpoint_w: int, capacity_w: int, bounds: PowerBounds) -> tuple[FloatArray, int]:
        """(gain per row, correction W) for a dispatch of ``setpoint_w`` at ``now``; also marks the commands in force
        as ended at ``now`` (a reading taken after that may already show the new ones)."""
        if len(bounds.lo) != len(self._keys):
            raise ValueError(f"bounds for {len(bounds.lo)} vehicles, tracker installed with {len(self._keys)}")
        gain = self.gains()
        if self._last is not None:
            requested, expected = self._last
            self.correction_w = correction_step(
                self.correction_w,
                requested_w=requested,
                expected_w=expected,
                residual_w=self.residual_w(now),
                bound_w=self.settings.bound_fraction * capacity_w,
                settings=self.settings,
            )
        # The corrected request stays inside what the fleet is expected to deliver (no wind-up when saturated).
        self.correction_w = correction_clip(
            self.correction_w,
            setpoint_w=setpoint_w,
            min_w=float((np.minimum(gain, 1.0) * bounds.lo).sum()),
            max_w=float((np.minimum(gain, 1.0) * bounds.hi).sum()),
        )
        ending = np.isinf(self._current.until)
        self._current.until[ending] = now
        return gain, round(self.correction_w)

    def sent(
        self,
        *,
        evses: Sequence[tuple[str, int]],
        allocation: Allocation,
        bounds: PowerBounds,
        gain: FloatArray,
        requested_w: int,
        results: Iterable[CommandResult],
    ) -> None:
        """The fan-out of a dispatch ended: record what each EVSE accepted (``evses[i]``: (station id, EVSE id) of
        the allocation's row ``i``)."""
        self._last = (float(requested_w), float(allocation.expected_w))
        answered = {
            r.station_id: r.answered_at
            for r in results
            if r.status == "result" and r.answer == "Accepted" and r.answered_at is not None
        }
        pairs = [(i, self._row_of.get(evse)) for i, evse in enumerate(evses)]
        src = np.array([i for i, row in pairs if row is not None], dtype=np.int64)
        rows = np.array([row for _, row in pairs if row is not None], dtype=np.int64)
        if rows.size == 0:
            return
        self._previous.take(rows, self._current, rows)
        at = np.array([answered.get(evses[i][0], math.nan) for i in src.tolist()], dtype=np.float64)
        cur = self._current
        cur.power[rows] = np.where(np.isnan(at), np.nan, allocation.power_w[src].astype(np.float64))
        cur.lo[rows], cur.hi[rows], cur.gain[rows] = bounds.lo[src], bounds.hi[src], gain[src]
        cur.answered[rows] = at
        cur.until[rows] = math.inf

    def readings(self, readings: Iterable[Reading], *, now: float) -> int:
        """Pair metered power with the commands in force; returns how many readings were usable for a gain."""
        s = self.settings
        rows, measured, commands, lows, highs = [], [], [], [], []
        for reading in readings:
            row = self._row_of.get((reading.station_id, reading.evse_id))
            if row is None or not math.isfinite(reading.power_w):
                continue
            if reading.at > now + FUTURE_TOLERANCE_S or now - reading.at > s.max_age_s:
                continue  # stale, or the station's clock is off: it cannot be paired with a command
            source = self._in_force(row, reading.at)
            if source is None:
                continue
            command = source.power[row]
            self._residual[row] = reading.power_w - source.gain[row] * command
            self._residual_at[row] = reading.at
            rows.append(row)
            measured.append(reading.power_w)
            commands.append(command)
            lows.append(source.lo[row])
            highs.append(source.hi[row])
        if not rows:
            return 0
        idx = np.array(rows)
        mask = usable(np.array(commands), np.array(lows), np.array(highs), s)
        if not mask.any():
            return 0
        idx, c, m = idx[mask], np.array(commands)[mask], np.array(measured)[mask]
        num, den = gain_update(self._num[idx], self._den[idx], c, m, np.ones(idx.size, dtype=bool), s)
        self._num[idx], self._den[idx] = num, den
        self.samples += int(idx.size)
        return int(idx.size)

    def _in_force(self, row: int, at: float) -> _Commands | None:
        """The settled command a reading taken at ``at`` shows, if any."""
        settle = self.settings.settle_s
        for source in (self._current, self._previous):
            answered = source.answered[row]
            if math.isnan(source.power[row]) or math.isnan(answered):
                continue
            if answered + settle <= at < source.until[row]:
                return source
        return None
