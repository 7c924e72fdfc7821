"""IEEE 1547-2018 protection: frequency and voltage must-trip with clearing times, anti-islanding, enter service.

Pure state machine driven by (time, frequency, voltage, PLL lock) samples; it reads no clock of its own. It works
on raw samples (never the smoothed ones) and does not depend on the CSMS link: it keeps working in fail-safe.

Clearing times count from the onset of the condition, which lies somewhere in the sample period before it was
first seen. So a trip fires at the last sample that still meets the deadline in the worst case:
``(now - first_seen) + 2 * sample_period >= clearing``; with samples every ``sample_period_s`` the inverter ceases
to energise within the clearing time, at most two sample periods early (never late).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


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


def default_trips(nominal_hz: float = 60.0) -> tuple[TripSetting, ...]:
    """IEEE 1547-2018 default must-trip settings (Category II voltage), scaled by nominal/60 for 50 Hz."""
    k = nominal_hz / 60.0
    fq, vq = Quantity.FREQUENCY, Quantity.VOLTAGE
    return (
        TripSetting("OF2", fq, True, 62.0 * k, 0.16),
        TripSetting("OF1", fq, True, 61.2 * k, 300.0),
        TripSetting("UF1", fq, False, 58.5 * k, 300.0),
        TripSetting("UF2", fq, False, 56.5 * k, 0.16),
        TripSetting("OV2", vq, True, 1.20, 0.16),
        TripSetting("OV1", vq, True, 1.10, 2.0),
        TripSetting("UV1", vq, False, 0.70, 10.0),
        TripSetting("UV2", vq, False, 0.45, 0.16),
    )


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
    state: ProtectionState = ProtectionState.NORMAL
    tripped_by: str | None = None
    _since: dict[str, float] = field(default_factory=dict)
    _ok_since: float | None = None
    _ramp_start: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.islanding_clearing_s <= 2.0:
            raise ValueError("IEEE 1547 requires anti-islanding within 2 s")

    def replace_trips(self, quantity: Quantity, over: bool, settings: list[TripSetting]) -> None:
        """Swap one family of trip settings (e.g. HFMustTrip from SetDERControl) for new ones."""
        keep = tuple(t for t in self.trips if not (t.quantity is quantity and t.over is over))
        self.trips = keep + tuple(settings)
        self._since.clear()

    def _grid_lost(self, f_hz: float, v_pu: float, pll_locked: bool) -> bool:
        return (not pll_locked) or math.isnan(f_hz) or f_hz <= 0.0 or v_pu < self.dead_bus_pu

    def _first_violation(self, now: float, f_hz: float, v_pu: float, pll_locked: bool) -> str | None:
        since = self._since
        conditions: list[tuple[str, bool, float]] = [
            ("ANTI_ISLANDING", self._grid_lost(f_hz, v_pu, pll_locked), self.islanding_clearing_s)
        ]
        conditions.extend((t.name, t.violated(f_hz, v_pu), t.clearing_s) for t in self.trips)
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
