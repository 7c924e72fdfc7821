"""The local control law: pure functions and small value objects, no I/O, no network, no clock reads.

Sign convention (OCPP and ``fleet.numerics.snapshot``): power in W, positive = charging (import from the grid),
negative = discharging (export to the grid).

One step turns a (filtered) frequency sample plus what the CSMS asked for into an inverter power command:

    target = mode law (ChargingOnly / Idle / CentralSetpoint / CentralFrequency / LocalFrequency)
             + IEEE 1547 frequency-watt response (36 mHz deadband, 5 % droop by default, or the CSMS's curve)
    bounds = mobility floor, departure target, full pack, power limits, thermal derating, fail-safe, protection
    command = ramp-limited move from the previous command towards target, then hard bounds again
              (safety and the floor beat the ramp limit).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import StrEnum


class OperationMode(StrEnum):
    """OCPP 2.1 ChargingSchedulePeriod.operationMode values this agent executes."""

    CHARGING_ONLY = "ChargingOnly"
    IDLE = "Idle"
    CENTRAL_SETPOINT = "CentralSetpoint"
    CENTRAL_FREQUENCY = "CentralFrequency"
    LOCAL_FREQUENCY = "LocalFrequency"


SUPPORTED_MODES = frozenset(m.value for m in OperationMode)


@dataclass(frozen=True, slots=True)
class DroopSettings:
    """IEEE 1547-2018 frequency-droop parameters (defaults for all categories).

    ``over_droop``/``under_droop`` are per unit (0.05 = 5 %): a deviation beyond the deadband of
    ``nominal_hz * droop`` moves power by ``rated_w``.
    """

    nominal_hz: float = 60.0
    deadband_over_hz: float = 0.036
    deadband_under_hz: float = 0.036
    over_droop: float = 0.05
    under_droop: float = 0.05
    response_time_s: float = 5.0
    enabled: bool = True


def droop_delta_w(f_hz: float, s: DroopSettings, rated_w: float) -> float:
    """Power change the droop asks for at frequency ``f_hz``: + (absorb more) above nominal, - below.

    P = P_pre - (f - f_nom - db) / (f_nom * k) * P_rated for generation; a charger's import is the opposite sign,
    so over-frequency raises charging and under-frequency raises discharging.
    """
    if not s.enabled:
        return 0.0
    dev = f_hz - s.nominal_hz
    if dev > s.deadband_over_hz:
        return (dev - s.deadband_over_hz) / (s.nominal_hz * s.over_droop) * rated_w
    if dev < -s.deadband_under_hz:
        return (dev + s.deadband_under_hz) / (s.nominal_hz * s.under_droop) * rated_w
    return 0.0


@dataclass(frozen=True, slots=True)
class Curve:
    """Piecewise-linear curve x -> power W, held flat beyond the end points (v2xFreqWattCurve / SignalWattCurve)."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    @classmethod
    def from_points(cls, points: list[tuple[float, float]]) -> Curve:
        if not 1 <= len(points) <= 20:
            raise ValueError("a curve has 1 to 20 points")
        pts = sorted(points)
        xs = tuple(float(p[0]) for p in pts)
        if len(set(xs)) != len(xs):
            raise ValueError("curve points must have distinct x values")
        return cls(xs=xs, ys=tuple(float(p[1]) for p in pts))

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, x)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(slots=True)
class Setpoints:
    """What the CSMS currently asks for (the active charging-profile period plus AFRR signal)."""

    mode: str = OperationMode.CHARGING_ONLY
    limit_w: float | None = None  # charge limit (period ``limit``), None = charger maximum
    discharge_limit_w: float | None = None  # period ``dischargeLimit`` (<= 0), None = charger maximum
    setpoint_w: float | None = None
    baseline_w: float = 0.0
    freq_watt_curve: Curve | None = None
    signal_watt_curve: Curve | None = None
    afrr_signal: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Hardware and policy limits (the lower of car and charger), in W and fractions of capacity."""

    max_charge_w: float = 11_000.0
    max_discharge_w: float = 11_000.0  # magnitude
    rated_w: float = 11_000.0  # P_rated for the droop
    ramp_w_per_s: float = 22_000.0  # inverter can go full scale in 0.5 s
    floor_soc: float = 0.20  # mobility floor: never discharge below
    max_soc: float = 1.0
    eta_charge: float = 0.95  # grid -> pack
    eta_discharge: float = 0.95  # pack -> grid
    pack_derate_start_c: float = 45.0
    pack_max_c: float = 55.0
    inverter_derate_start_c: float = 70.0
    inverter_max_c: float = 85.0


@dataclass(slots=True)
class BatteryState:
    soc: float  # 0..1
    capacity_wh: float
    pack_temp_c: float = 25.0
    inverter_temp_c: float = 25.0


@dataclass(slots=True)
class Departure:
    """The driver's need: ``target_soc`` at ``seconds_left`` from now (None: no departure known)."""

    seconds_left: float | None = None
    target_soc: float = 0.0


@dataclass(slots=True)
class Command:
    power_w: float
    energize: bool = True
    target_w: float = 0.0  # before bounds and ramp, for logging and tests
    bound: str = ""  # which bound won, if any ("floor", "departure", "thermal", "ramp", ...)


def thermal_derate(temp_c: float, start_c: float, max_c: float) -> float:
    """1 below ``start_c``, linearly down to 0 at ``max_c``."""
    if temp_c <= start_c:
        return 1.0
    if temp_c >= max_c:
        return 0.0
    return (max_c - temp_c) / (max_c - start_c)


def mode_target_w(f_hz: float, sp: Setpoints, droop: DroopSettings, lim: Limits) -> float:
    """The unbounded power the operation mode asks for at frequency ``f_hz``."""
    mode = sp.mode
    if mode == OperationMode.IDLE:
        return 0.0
    if mode == OperationMode.LOCAL_FREQUENCY and sp.freq_watt_curve is not None:
        # OCPP 2.1 LocalFrequency: the curve's power sits on top of v2xBaseline.
        return sp.baseline_w + sp.freq_watt_curve(f_hz)
    if mode in (OperationMode.CENTRAL_SETPOINT, OperationMode.CENTRAL_FREQUENCY):
        base = sp.setpoint_w or 0.0
        if sp.afrr_signal is not None and sp.signal_watt_curve is not None:
            base = sp.signal_watt_curve(float(sp.afrr_signal))
        return base + droop_delta_w(f_hz, droop, lim.rated_w)
    # ChargingOnly: charge at the limit; over-frequency cannot raise it, under-frequency lowers it (not below 0).
    limit = lim.max_charge_w if sp.limit_w is None else sp.limit_w
    return max(0.0, min(limit, limit + droop_delta_w(f_hz, droop, lim.rated_w)))


def power_bounds(
    sp: Setpoints,
    lim: Limits,
    bat: BatteryState,
    dep: Departure,
    dt_s: float,
    *,
    allow_discharge: bool = True,
    cap_fraction: float = 1.0,
) -> tuple[float, float, str, str]:
    """Lowest and highest admissible power for the next ``dt_s`` seconds, and which bound set each.

    Energy bounds are computed so that holding the power for ``dt_s`` cannot cross them: the pack never goes
    below the mobility floor, and the departure target stays reachable at full charge power.
    """
    derate = min(
        thermal_derate(bat.pack_temp_c, lim.pack_derate_start_c, lim.pack_max_c),
        thermal_derate(bat.inverter_temp_c, lim.inverter_derate_start_c, lim.inverter_max_c),
    )
    hi, hi_by = lim.max_charge_w, "max_charge"
    lo, lo_by = -lim.max_discharge_w, "max_discharge"
    if derate < 1.0:
        hi, lo, hi_by, lo_by = hi * derate, lo * derate, "thermal", "thermal"
    if sp.limit_w is not None and sp.limit_w < hi:
        hi, hi_by = max(0.0, sp.limit_w), "profile_limit"
    if sp.discharge_limit_w is not None and sp.discharge_limit_w > lo:
        lo, lo_by = min(0.0, sp.discharge_limit_w), "profile_discharge_limit"
    if sp.mode == OperationMode.CHARGING_ONLY or not allow_discharge:
        lo, lo_by = 0.0, "no_discharge" if allow_discharge else "failsafe"
    if cap_fraction < 1.0:
        hi, lo, hi_by, lo_by = hi * cap_fraction, lo * cap_fraction, "enter_service", "enter_service"

    dt_h = dt_s / 3600.0
    # Mobility floor: discharging |p| for dt takes |p| * dt / eta_d out of the pack.
    floor_wh = (bat.soc - lim.floor_soc) * bat.capacity_wh
    floor_lo = -max(0.0, floor_wh) * lim.eta_discharge / dt_h
    if floor_lo > lo:
        lo, lo_by = floor_lo, "floor"
    # Full pack.
    room_wh = (lim.max_soc - bat.soc) * bat.capacity_wh
    full_hi = max(0.0, room_wh) / (lim.eta_charge * dt_h)
    if full_hi < hi:
        hi, hi_by = full_hi, "full"
    # Departure: after this step, charging at the (derated) maximum must still reach the target in time.
    if dep.seconds_left is not None:
        need_wh = (dep.target_soc - bat.soc) * bat.capacity_wh
        left_h = max(0.0, dep.seconds_left - dt_s) / 3600.0
        slack_wh = left_h * max(hi, 0.0) * lim.eta_charge - need_wh
        dep_lo = -slack_wh * lim.eta_discharge / dt_h if slack_wh >= 0 else -slack_wh / (lim.eta_charge * dt_h)
        if dep_lo > lo:
            lo, lo_by = min(dep_lo, hi), "departure"
    if lo > hi:  # e.g. at the floor with a zero charge limit: stand still rather than discharge
        lo = hi = max(0.0, min(lo, hi))
    return lo, hi, lo_by, hi_by


def control_step(
    f_hz: float,
    prev_w: float,
    sp: Setpoints,
    droop: DroopSettings,
    lim: Limits,
    bat: BatteryState,
    dep: Departure,
    dt_s: float,
    *,
    allow_discharge: bool = True,
    energize: bool = True,
    cap_fraction: float = 1.0,
) -> Command:
    """One control step: the frequency sample and setpoints in, the inverter command out."""
    if not energize:
        # Protection tripped: cease to energise at once, no ramp.
        return Command(power_w=0.0, energize=False, target_w=0.0, bound="trip")
    target = mode_target_w(f_hz, sp, droop, lim)
    lo, hi, lo_by, hi_by = power_bounds(
        sp, lim, bat, dep, dt_s, allow_discharge=allow_discharge, cap_fraction=cap_fraction
    )
    bound = ""
    want = target
    if want < lo:
        want, bound = lo, lo_by
    elif want > hi:
        want, bound = hi, hi_by
    step = lim.ramp_w_per_s * dt_s
    if want > prev_w + step:
        want, bound = prev_w + step, "ramp"
    elif want < prev_w - step:
        want, bound = prev_w - step, "ramp"
    # Hard bounds beat the ramp: the floor, the fail-safe and the trip are safety, the ramp is comfort.
    if want < lo:
        want, bound = lo, lo_by
    elif want > hi:
        want, bound = hi, hi_by
    return Command(power_w=want, energize=True, target_w=target, bound=bound)


@dataclass(slots=True)
class LookAheadFilter:
    """Zero-lag smoothing of frequency samples over a short window.

    A least-squares line through the last ``size`` samples, evaluated at the newest sample's time (plus
    ``lookahead_s`` to compensate a known actuator delay). A linear trend passes through with no lag, while white
    noise is reduced (variance x (4N-2)/(N(N+1)), 0.6 for N=5). With no look-ahead the estimate is clamped to the
    window's range, so a step does not overshoot.
    """

    size: int = 5
    lookahead_s: float = 0.0
    _t: list[float] = field(default_factory=list)
    _f: list[float] = field(default_factory=list)

    def push(self, t: float, f_hz: float) -> float:
        ts, fs = self._t, self._f
        ts.append(t)
        fs.append(f_hz)
        if len(ts) > self.size:
            del ts[0]
            del fs[0]
        n = len(ts)
        if n < 3:
            return f_hz
        t_ref = ts[-1]
        sx = sy = sxx = sxy = 0.0
        for i in range(n):
            x = ts[i] - t_ref
            y = fs[i]
            sx += x
            sy += y
            sxx += x * x
            sxy += x * y
        den = n * sxx - sx * sx
        if den <= 0.0:
            return f_hz
        slope = (n * sxy - sx * sy) / den
        intercept = (sy - slope * sx) / n
        est = intercept + slope * self.lookahead_s
        if self.lookahead_s == 0.0:
            lo, hi = min(fs), max(fs)
            est = lo if est < lo else hi if est > hi else est
        return est

    def reset(self) -> None:
        self._t.clear()
        self._f.clear()
