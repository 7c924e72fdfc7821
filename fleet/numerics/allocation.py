"""Split a fleet power setpoint across vehicles: exact when feasible, safe always, wear-balanced. Pure numpy.

API::

    allocate(vehicles: Sequence[VehicleSnapshot] | FleetArrays, setpoint_w: int, *,
             now: datetime | float, duration_s: float = 900.0,
             weighting: Weighting = wear_balanced_weights) -> Allocation

``setpoint_w`` is the fleet's total grid power (W, + charge / - discharge) to hold for ``duration_s`` seconds from
``now``. Each vehicle gets an integer power inside its :func:`~fleet.numerics.arrays.power_bounds` (power limits after
thermal derating; never below the mobility floor; departure target still reachable at maximum charge power after
the interval). If ``sum(lo) <= setpoint_w <= sum(hi)`` the powers add up to exactly ``setpoint_w``; otherwise every
vehicle sits at the bound on the requested side, the total is the nearest feasible one and ``reason`` says why.

Method (deterministic; O(n) per Newton pass, O(n log n) worst case): the continuous problem

    minimise  sum_i p_i^2 / (2 w_i)   subject to  sum_i p_i = S,  lo_i <= p_i <= hi_i

has the solution ``p_i = clip(lambda * w_i, lo_i, hi_i)`` (KKT). ``F(lambda) = sum_i p_i`` is piecewise linear
and non-decreasing with 2n breakpoints; a safeguarded Newton iteration finds ``lambda`` in a few vector passes,
falling back to sorting the breakpoints (exact, O(n log n)) if it has not converged. ``w_i`` is the charge weight when
the fleet charges beyond its must-run level, the discharge weight otherwise (see :func:`wear_balanced_weights`).
The powers are then rounded to whole watts, handing the remainder out by largest fractional part, so the integer
sum is exact. 10,000 vehicles take a few milliseconds (see ``bench/fleet_allocation.py``).

**Response gains (closed-loop dispatch).** ``gain[i]`` is vehicle ``i``'s measured delivery per watt commanded
(:mod:`fleet.numerics.response`), taken within ``[0, GAIN_MAX]``. The setpoint is then met in *expected delivery*
``sum g_i p_i`` with commands ``p_i = clip(lambda w_i / max(g_i, GAIN_MIN), lo_i, hi_i)``: each car's delivered
share follows the same weights as without gains, its command is scaled by at most ``1 / GAIN_MIN`` (2x) and at least
``1 / GAIN_MAX``, and a car that over-delivers is commanded at most ``hi_i / g_i`` (``lo_i / g_i``) so it is never
planned past its limits. A car that delivers nothing (``g = 0``) still gets a command (twice its share, so its
response can be measured again) but counts for nothing, and the others carry its part. ``lambda`` solves the same
monotone piecewise-linear equation in expected delivery. The commands respect every bound whatever the gains;
``expected_w`` meets the request when it can, and ``min_w``/``max_w`` and ``feasible`` are in expected delivery.

For the dispatch hot path, build :class:`~fleet.numerics.arrays.FleetArrays` once and pass it in (and
``fleet.with_soc(...)`` when state of charge changes): no Python loop over vehicles and no database access here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from fleet.numerics.arrays import FleetArrays, PowerBounds, power_bounds
from fleet.numerics.response import GAIN_MAX, GAIN_MIN
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.numerics.thermal import wear_weight

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Weighting = Callable[[FleetArrays], tuple[FloatArray, FloatArray]]

NEWTON_MAX_STEPS = 40

__all__ = ["Allocation", "FleetArrays", "Weighting", "allocate", "wear_balanced_weights"]


@dataclass(frozen=True, slots=True, eq=False)
class Allocation:
    """Result of :func:`allocate`. ``power_w[i]`` (int W, + charge) is for ``vehicle_id[i]`` (input order).

    ``feasible`` is True when ``achieved_w == requested_w``. ``reason`` explains an infeasible request and names
    vehicles that cannot reach their departure target even at full charge power (``short_vehicle_ids``; they are
    charged at full power and never discharged). ``min_w``/``max_w`` are the fleet's feasible range this interval.
    ``expected_w`` is the delivery expected from the commands: ``achieved_w`` without gains, ``sum g_i p_i`` with
    them (then ``feasible``, ``min_w`` and ``max_w`` are in expected delivery too).
    """

    vehicle_id: IntArray
    power_w: IntArray
    requested_w: int
    achieved_w: int
    feasible: bool
    reason: str | None
    min_w: int
    max_w: int
    short_vehicle_ids: tuple[int, ...]
    expected_w: int

    def items(self) -> Iterator[tuple[int, int]]:
        """(vehicle_id, power_w) pairs as plain ints."""
        return zip(self.vehicle_id.tolist(), self.power_w.tolist(), strict=True)

    def as_dict(self) -> dict[int, int]:
        return dict(self.items())


def wear_balanced_weights(fleet: FleetArrays) -> tuple[FloatArray, FloatArray]:
    """(charge weight, discharge weight) per vehicle: the wear factor times the energy room in that direction.

    Scaling by room (``capacity - soc`` for charge, ``soc - floor`` for discharge) makes every vehicle move the same
    fraction of its room, which spreads cycle depth instead of draining a few packs deeply; the wear factor
    (:func:`fleet.numerics.thermal.wear_weight`) gives lower-SoH, hotter and more-cycled packs a smaller share.
    """
    wear = wear_weight(fleet.state_of_health, fleet.temperature_c, fleet.cycles_today)
    charge_room = np.maximum(fleet.capacity_wh - fleet.soc_wh, 0.0) + 1.0
    discharge_room = np.maximum(fleet.soc_wh - fleet.floor_wh, 0.0) + 1.0
    return wear * charge_room, wear * discharge_room


def allocate(
    vehicles: Sequence[VehicleSnapshot] | FleetArrays,
    setpoint_w: int,
    *,
    now: datetime | float,
    duration_s: float = 900.0,
    weighting: Weighting = wear_balanced_weights,
    gain: npt.ArrayLike | None = None,
) -> Allocation:
    """Split ``setpoint_w`` across ``vehicles`` for ``duration_s`` seconds from ``now`` (see module docstring).

    ``gain``: each vehicle's response gain (delivered / commanded; non-finite or non-positive values count as 1),
    to split the expected delivery rather than the commands.
    """
    fleet = vehicles if isinstance(vehicles, FleetArrays) else FleetArrays.from_snapshots(vehicles)
    bounds = power_bounds(fleet, now=now, duration_s=duration_s)
    # Without gains every car delivers what it is commanded (g = 1): the same solve, in commands.
    g = np.ones(len(fleet)) if gain is None else _gains(gain, len(fleet))
    return _allocate(fleet, bounds, int(setpoint_w), g, weighting)


def _gains(gain: npt.ArrayLike, n: int) -> FloatArray:
    g = np.asarray(gain, dtype=np.float64)
    if g.shape != (n,):
        raise ValueError(f"gain has shape {g.shape}, fleet has ({n},)")
    return np.clip(np.where(np.isnan(g), 1.0, g), 0.0, GAIN_MAX)


def _allocate(
    fleet: FleetArrays, bounds: PowerBounds, requested: int, g: FloatArray, weighting: Weighting
) -> Allocation:
    """:func:`allocate` in expected delivery ``sum g_i p_i`` (module docstring, "Response gains").

    With every ``g_i = 1`` the command and delivery ranges are the bounds themselves (integers), the KKT weights
    are the plain ones, and ``lambda`` puts the continuous powers within half a watt of the clamped request, so
    rounding their sum gives that request exactly: the plain allocation, to the watt.
    """
    lo, hi = bounds.lo, bounds.hi
    scale = 1.0 / np.maximum(g, GAIN_MIN)  # command per unit of weighted share
    over = g > 1.0  # over-delivering: the command is cut so the expected delivery stays within the bounds
    c_lo = np.where(over, np.maximum(lo, lo / np.maximum(g, 1.0)), lo)
    c_hi = np.maximum(np.where(over, np.minimum(hi, hi / np.maximum(g, 1.0)), hi), c_lo)
    e_lo, e_hi = g * c_lo, g * c_hi  # expected delivery range of each car
    min_w = math.ceil(float(e_lo.sum()) - 1e-6)
    max_w = max(math.floor(float(e_hi.sum()) + 1e-6), min_w)
    target = min(max(requested, min_w), max_w)
    if len(fleet) == 0:
        power = np.zeros(0, dtype=np.int64)
    else:
        if target <= min_w:
            p = c_lo
        elif target >= max_w:
            p = c_hi
        else:
            w_charge, w_discharge = weighting(fleet)
            e_bounds = PowerBounds(lo=e_lo, hi=e_hi, short=bounds.short)
            lam, charging = _lambda(e_bounds, target, g * scale * w_charge, g * scale * w_discharge)
            p = np.clip(lam * scale * (w_charge if charging else w_discharge), c_lo, c_hi)
        total = min(max(round(float(p.sum())), int(lo.sum())), int(hi.sum()))
        power = _round_to_total(p, lo, hi, total)
    short_ids = tuple(fleet.vehicle_id[bounds.short].tolist())
    return Allocation(
        vehicle_id=fleet.vehicle_id,
        power_w=power,
        requested_w=requested,
        achieved_w=int(power.sum()),
        feasible=target == requested,
        reason=_reason(requested, min_w, max_w, short_ids),
        min_w=min_w,
        max_w=max_w,
        short_vehicle_ids=short_ids,
        expected_w=round(float((g * power).sum())),
    )


def _reason(requested: int, min_w: int, max_w: int, short_ids: tuple[int, ...]) -> str | None:
    parts = []
    if requested > max_w:
        parts.append(f"requested {requested} W exceeds the fleet's maximum {max_w} W (charge limits, full packs)")
    elif requested < min_w:
        parts.append(
            f"requested {requested} W is below the fleet's minimum {min_w} W "
            "(discharge limits, mobility floors, departure needs)"
        )
    if short_ids:
        shown = ", ".join(str(i) for i in short_ids[:10])
        more = f" and {len(short_ids) - 10} more" if len(short_ids) > 10 else ""
        parts.append(f"vehicles {shown}{more} cannot reach their departure target even at full charge power")
    return "; ".join(parts) or None


def _lambda(bounds: PowerBounds, target: int, w_charge: FloatArray, w_discharge: FloatArray) -> tuple[float, bool]:
    """``(lambda, charging)``: ``sum clip(lambda * w, lo, hi) = target`` with ``w`` the charge weights when
    ``charging`` (``lambda >= 0``), else the discharge weights (``lambda <= 0``)."""
    lo, hi = bounds.lo, bounds.hi
    at_zero = float(np.clip(0.0, lo, hi).sum())
    if target >= at_zero:
        return _waterfill_up(lo, hi, np.maximum(w_charge, 1e-12), float(target)), True
    # Mirror the discharge side into the same increasing problem: p' = -p.
    return -_waterfill_up(-hi, -lo, np.maximum(w_discharge, 1e-12), float(-target)), False


def _waterfill_up(lo: FloatArray, hi: FloatArray, w: FloatArray, target: float) -> float:
    """``lam >= 0`` such that ``clip(lam * w, lo, hi)`` sums to ``target`` (within half a watt).

    Safeguarded Newton on the monotone piecewise-linear ``F(lam)``: once the set of unclamped vehicles is right,
    one step lands exactly, so it takes a handful of O(n) passes; a step leaving the bracket bisects instead. If it
    has not converged after ``NEWTON_MAX_STEPS`` passes, the exact breakpoint sort (O(n log n)) finishes the job.
    """
    lam_lo, lam_hi = 0.0, float(np.max(np.maximum(hi, 0.0) / w))
    lam = lam_hi / 2
    for _ in range(NEWTON_MAX_STEPS):
        x = lam * w
        err = target - float(np.clip(x, lo, hi).sum())
        if abs(err) < 0.5:
            return lam
        if err > 0:
            lam_lo = lam
        else:
            lam_hi = lam
        slope = float(w[(x > lo) & (x < hi)].sum())
        step = lam + err / slope if slope > 0 else -1.0
        lam = step if lam_lo < step < lam_hi else (lam_lo + lam_hi) / 2
    return _waterfill_sorted(lo, hi, w, target)


def _waterfill_sorted(lo: FloatArray, hi: FloatArray, w: FloatArray, target: float) -> float:
    """Exact ``lam`` from the 2n sorted breakpoints of ``F`` (where each vehicle starts and stops following it)."""
    start = np.maximum(lo, 0.0) / w
    stop = np.maximum(hi, 0.0) / w
    keys = np.concatenate((start, stop))
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    slope = np.cumsum(np.concatenate((w, -w))[order])
    total_at = float(np.clip(0.0, lo, hi).sum()) + np.concatenate(([0.0], np.cumsum(slope[:-1] * np.diff(keys))))
    total_at = np.maximum.accumulate(total_at)  # guard the sort key against rounding noise
    k = int(np.clip(np.searchsorted(total_at, target, side="right") - 1, 0, keys.size - 1))
    lam = keys[k] + (target - total_at[k]) / slope[k] if slope[k] > 1e-12 else keys[k]
    return float(lam)


def _round_to_total(p: FloatArray, lo: FloatArray, hi: FloatArray, total: int) -> IntArray:
    """Whole watts within [lo, hi] summing exactly to ``total`` (which lies within [sum lo, sum hi]).

    Floors every power, then hands the missing watts one each to the largest fractional parts (a linear-time
    partition, deterministic for a given input); any residue from float error goes through :func:`_hand_out`.
    """
    base = np.clip(np.floor(p), lo, hi)
    frac = p - base
    remainder = total - int(base.sum())
    if 0 < remainder < base.size:
        top = np.argpartition(-frac, remainder - 1)[:remainder]
        top = top[base[top] < hi[top]]
        base[top] += 1.0
        remainder -= int(top.size)
    if remainder > 0:
        order = np.argsort(-frac, kind="stable")
        base = _hand_out(base, hi - base, order, remainder, sign=1)
    elif remainder < 0:
        order = np.argsort(frac, kind="stable")
        base = _hand_out(base, base - lo, order, -remainder, sign=-1)
    return base.astype(np.int64)


def _hand_out(base: FloatArray, room: FloatArray, order: IntArray, units: int, *, sign: int) -> FloatArray:
    """Move ``units`` watts in priority ``order``: first one watt each, then whatever room is left."""
    for cap in (np.minimum(room, 1.0), room):
        if units <= 0:
            break
        caps = cap[order]
        before = np.cumsum(caps) - caps
        take = np.clip(units - before, 0.0, caps)
        base = base.copy()
        base[order] += sign * take
        room = room.copy()
        room[order] -= take
        units -= int(take.sum())
    return base
