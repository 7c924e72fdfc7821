"""IEEE 1547-2018 protection: frequency and voltage must-trip with clearing times, anti-islanding, enter service.

Anti-islanding here is a second, independent layer: the certified islanding detection is the inverter's (UL 1741 SB,
with active methods). The agent adds passive methods on its own samples: loss of grid (0 Hz, not a number, PLL lost,
dead bus), rate of change of frequency over a window (ROCOF) and voltage vector shift (phase jump), alongside the
under/over frequency and voltage trips. Their thresholds sit just outside what IEEE 1547 obliges a DER to ride
through (see ``edge_agent.grid_code``), so an island whose frequency and voltage stay inside that envelope (a
load-matched island drifting slowly) is left to the inverter's active detection: no passive relay can tell it from
a grid disturbance it must ride through.

Pure state machine driven by (time, frequency, voltage, PLL lock) samples; it reads no clock of its own. It works
on raw samples (never the smoothed ones) and does not depend on the CSMS link: it keeps working in fail-safe.

Clearing times count from the onset of the condition, which lies somewhere in the sample period before it was
first seen. So a trip fires at the last sample that still meets the deadline in the worst case:
``(now - first_seen) + 2 * sample_period >= clearing``; with samples every ``sample_period_s`` the inverter ceases
to energise within the clearing time, at most two sample periods early (never late).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from edge_agent import grid_code

# A phase jump can be told from a drift only in samples close together (a vector-shift relay compares successive
# cycles); the agent's loop samples every 0.2 s at most.
VECTOR_SHIFT_MAX_DT_S = 0.2


class Quantity(StrEnum):
    FREQUENCY = "frequency"  # Hz
    VOLTAGE = "voltage"  # per unit of nominal


@dataclass(frozen=True, slots=True)
class TripSetting:
    name: str
    quantity: Quantity
    over: bool  # True: trips above threshold, False: below
    threshold: float
    clearing_s: float

    def violated(self, f_hz: float, v_pu: float) -> bool:
        value = f_hz if self.quantity is Quantity.FREQUENCY else v_pu
        return value > self.threshold if self.over else value < self.threshold


def default_trips(nominal_hz: float = 60.0, category: str = "II") -> tuple[TripSetting, ...]:
    """IEEE 1547-2018 default must-trip settings of the category (Tables 11-13, 18), scaled by nominal/60 for 50 Hz."""
    return tuple(
        TripSetting(s.name, Quantity(s.quantity), s.over, s.threshold, s.clearing_s)
        for s in grid_code.stages(category, nominal_hz)
    )


@dataclass(frozen=True, slots=True)
class IslandingSettings:
    """Passive islanding detection: ROCOF over a window, and vector shift (defaults: ``edge_agent.grid_code``).

    Vector shift is measured the way a vector-shift relay measures it, from the cycle timing: the meter's frequency
    is the phase advance over its sample period, so ``360 * (f - f_expected) * dt`` is the phase the voltage jumped
    by in that sample, ``f_expected`` being extrapolated from the (median-filtered) samples before it. ROCOF is
    taken over ``rocof_window_s`` from median-of-3 filtered samples, so that a phase jump (a one-sample frequency
    spike) reads as a vector shift, not as a rate of change.
    """

    rocof_hz_per_s: float = 2.5
    rocof_window_s: float = grid_code.ROCOF_WINDOW_S
    vector_shift_deg: float = 65.0

    @classmethod
    def for_category(cls, category: str, phases: int = 1) -> IslandingSettings:
        return cls(grid_code.default_rocof(category), grid_code.ROCOF_WINDOW_S, grid_code.default_vector_shift(phases))


@dataclass(frozen=True, slots=True)
class EnterService:
    """IEEE 1547 enter-service criteria: window, delay and ramp before full power again."""

    v_low_pu: float = 0.917
    v_high_pu: float = 1.05
    f_low_hz: float = 59.5
    f_high_hz: float = 60.1
    delay_s: float = 300.0
    ramp_s: float = 300.0

    def within(self, f_hz: float, v_pu: float) -> bool:
        return self.f_low_hz <= f_hz <= self.f_high_hz and self.v_low_pu <= v_pu <= self.v_high_pu


class ProtectionState(StrEnum):
    NORMAL = "normal"
    TRIPPED = "tripped"
    RAMPING = "ramping"


@dataclass(slots=True)
class ProtectionStatus:
    energize: bool
    cap_fraction: float  # 0..1 of rated power allowed (enter-service ramp)
    state: ProtectionState
    tripped_by: str | None = None
    event: str | None = None  # "trip" or "enter_service" on the sample where it happened


@dataclass
class Protection:
    """Must-trip, anti-islanding and enter-service logic.

    Anti-islanding / loss of grid: a frequency of 0 (or not a number), a PLL that lost lock, or a voltage below
    ``dead_bus_pu`` means the grid is gone; the inverter ceases to energise within ``islanding_clearing_s``
    (IEEE 1547: 2 s at most). The ordinary UF2/UV2 settings usually get there first.
    """

    trips: tuple[TripSetting, ...] = field(default_factory=default_trips)
    enter_service: EnterService = field(default_factory=EnterService)
    sample_period_s: float = 0.1
    islanding_clearing_s: float = 1.0
    dead_bus_pu: float = 0.1
    islanding: IslandingSettings = field(default_factory=IslandingSettings)
    category: str = "II"  # IEEE 1547 abnormal operating performance category: what SetDERControl may set
    nominal_hz: float = 60.0
    state: ProtectionState = ProtectionState.NORMAL
    tripped_by: str | None = None
    last_rocof_hz_per_s: float = 0.0
    last_vector_shift_deg: float = 0.0
    _since: dict[str, float] = field(default_factory=dict)
    _ok_since: float | None = None
    _ramp_start: float | None = None
    _raw: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=3))
    _filtered: deque[tuple[float, float]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not 0 < self.islanding_clearing_s <= 2.0:
            raise ValueError("IEEE 1547 requires anti-islanding within 2 s")

    @classmethod
    def for_category(cls, category: str, *, nominal_hz: float = 60.0, phases: int = 1, **kw: object) -> Protection:
        """The category's default trips and islanding thresholds (kw: any other field, e.g. ``islanding``)."""
        kw.setdefault("islanding", IslandingSettings.for_category(category, phases))
        return cls(trips=default_trips(nominal_hz, category), category=category, nominal_hz=nominal_hz, **kw)  # type: ignore[arg-type]

    def replace_trips(self, quantity: Quantity, over: bool, settings: list[TripSetting]) -> None:
        """Swap one family of trip settings (e.g. HFMustTrip from SetDERControl) for new ones."""
        keep = tuple(t for t in self.trips if not (t.quantity is quantity and t.over is over))
        self.trips = keep + tuple(settings)
        self._since.clear()

    def _grid_lost(self, f_hz: float, v_pu: float, pll_locked: bool) -> bool:
        return (not pll_locked) or math.isnan(f_hz) or f_hz <= 0.0 or v_pu < self.dead_bus_pu

    def _signature(self, now: float, f_hz: float, lost: bool) -> tuple[bool, bool]:
        """(ROCOF beyond its threshold, vector shift beyond its threshold) on this sample."""
        raw, filt, isl = self._raw, self._filtered, self.islanding
        if lost or math.isinf(f_hz):
            raw.clear()
            filt.clear()
            self.last_rocof_hz_per_s = self.last_vector_shift_deg = 0.0
            return False, False
        shift = 0.0
        if len(filt) >= 2 and raw and now - raw[-1][0] <= VECTOR_SHIFT_MAX_DT_S:
            (t1, m1), (t2, m2) = filt[-1], filt[-2]
            t_prev = raw[-1][0]
            # the filtered samples lag by one: extrapolate the trend to now, then the phase gained in this sample
            expected = m1 + (m1 - m2) / max(t1 - t2, 1e-6) * (now - t1)
            shift = 360.0 * (f_hz - expected) * (now - t_prev)
        raw.append((now, f_hz))
        rocof = 0.0
        if len(raw) == 3:  # median of three, dated at the middle sample
            filt.append((raw[1][0], sorted(f for _, f in raw)[1]))
            while len(filt) > 2 and filt[1][0] <= filt[-1][0] - isl.rocof_window_s + 1e-9:
                filt.popleft()
            (t0, f0), (tn, fn) = filt[0], filt[-1]
            if tn - t0 >= isl.rocof_window_s - 1e-9:
                rocof = (fn - f0) / (tn - t0)
        self.last_rocof_hz_per_s, self.last_vector_shift_deg = rocof, shift
        return abs(rocof) > isl.rocof_hz_per_s, abs(shift) > isl.vector_shift_deg

    def _first_violation(self, now: float, f_hz: float, v_pu: float, pll_locked: bool) -> str | None:
        since = self._since
        lost = self._grid_lost(f_hz, v_pu, pll_locked)
        rocof, shift = self._signature(now, f_hz, lost)
        conditions: list[tuple[str, bool, float]] = [("ANTI_ISLANDING", lost, self.islanding_clearing_s)]
        conditions.extend((t.name, t.violated(f_hz, v_pu), t.clearing_s) for t in self.trips)
        conditions += [("VECTOR_SHIFT", shift, 0.0), ("ROCOF", rocof, 0.0)]
        fired = None
        for name, bad, clearing in conditions:
            if not bad:
                since.pop(name, None)
                continue
            start = since.setdefault(name, now)
            if fired is None and now - start + 2.0 * self.sample_period_s >= clearing - 1e-9:
                fired = name
        return fired

    def update(self, now: float, f_hz: float, v_pu: float, pll_locked: bool = True) -> ProtectionStatus:
        fired = self._first_violation(now, f_hz, v_pu, pll_locked)
        if fired is not None and self.state is not ProtectionState.TRIPPED:
            self.state, self.tripped_by = ProtectionState.TRIPPED, fired
            self._ok_since = self._ramp_start = None
            return ProtectionStatus(False, 0.0, self.state, fired, event="trip")
        if self.state is ProtectionState.NORMAL:
            return ProtectionStatus(True, 1.0, self.state)
        lost = self._grid_lost(f_hz, v_pu, pll_locked)
        if self.state is ProtectionState.TRIPPED:
            if lost or not self.enter_service.within(f_hz, v_pu):
                self._ok_since = None
                return ProtectionStatus(False, 0.0, self.state, self.tripped_by)
            if self._ok_since is None:
                self._ok_since = now
            if now - self._ok_since < self.enter_service.delay_s:
                return ProtectionStatus(False, 0.0, self.state, self.tripped_by)
            self.state, self._ramp_start = ProtectionState.RAMPING, now
            return ProtectionStatus(True, 0.0, self.state, self.tripped_by, event="enter_service")
        # RAMPING: power cap rises linearly over ramp_s, then back to normal.
        assert self._ramp_start is not None
        ramp = self.enter_service.ramp_s
        frac = 1.0 if ramp <= 0 else min(1.0, (now - self._ramp_start) / ramp)
        if frac >= 1.0:
            self.state, self.tripped_by = ProtectionState.NORMAL, None
        return ProtectionStatus(True, frac, self.state, self.tripped_by)
