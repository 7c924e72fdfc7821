"""The lowest import cap a fleet can hold a site to with the energy it has and can charge (pure; no Django).

Two answers to the same question, "which cap can the cars hold over the rest of the window":

- :func:`cap_plan` (the plan, every 15 min): a linear programme over every car and every step (HiGHS through
  ``scipy.optimize.linprog``). Per car, stored energy moves with its charge (x 0.92 grid to pack) and discharge
  (/ 0.92 pack to grid), stays within its mobility floor and its capacity, and is at least its departure target
  when it leaves (it gives nothing after). At every billed step, load + fleet <= cap; the fleet never exports. It
  minimises the cap (never below the billed peak so far: that is sunk), then, at that cap, the energy through the
  packs, charging as early as it can: the charging schedule the controller follows.
- :func:`holdable_cap` (the controller, at a reading, when the load is above the forecast): the same question for
  the fleet as one pack (sums of energies, limits and power), answered by bisection over a greedy simulation
  (charge as much as the cap leaves room for, as early as possible; discharge what the cap needs). For one pack
  greedy is optimal, so the answer is a lower bound of the per-car one: raising the cap to it never gives up a kW
  the cars could have held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from fleet.numerics.snapshot import VehicleSnapshot


@dataclass(frozen=True, slots=True)
class CapPlan:
    cap_w: int
    fleet_w: list[int]  # planned net fleet power per step (W, + charging)
    charge_wh: float  # grid energy into the packs over the window
    discharge_wh: float  # grid energy out of the packs over the window
    status: str


def _leave_step(v: VehicleSnapshot, start_ts: float, step_s: float, steps: int) -> int:
    """Steps the car is plugged in for from the window's start (it leaves at the start of this step)."""
    if v.departure is None:
        return steps
    return max(0, min(steps, math.floor((v.departure.timestamp() - start_ts) / step_s)))


def cap_plan(
    *,
    load_w: Sequence[float],
    billed: Sequence[bool],
    step_s: float,
    start_ts: float,
    vehicles: Sequence[VehicleSnapshot],
    floor_cap_w: float = 0.0,
) -> CapPlan:
    """The lowest cap (W, rounded up) the cars can hold the billed steps of ``load_w`` to, and the fleet power per step
    that holds it. ``floor_cap_w``: the billed peak so far (a cap under it avoids nothing)."""
    steps = len(load_w)
    load = np.asarray(load_w, dtype=float)
    mask = np.asarray(billed, dtype=bool)
    if steps == 0 or not mask.any():
        return CapPlan(max(0, math.ceil(floor_cap_w)), [0] * steps, 0.0, 0.0, "nothing billed")
    top = float(load[mask].max())
    if not vehicles or top <= floor_cap_w:
        return CapPlan(math.ceil(max(top, floor_cap_w)), [0] * steps, 0.0, 0.0, "no shaving needed or no cars")
    h = step_s / 3600.0
    n = len(vehicles)
    # variables: cap, then per car: x[steps] (charge W), y[steps] (discharge W), e[steps] (Wh after each step)
    nv = 1 + 3 * n * steps
    lo, hi = np.zeros(nv), np.zeros(nv)
    lo[0], hi[0] = max(floor_cap_w, 0.0), top
    eq_r, eq_c, eq_v, eq_b = [], [], [], []
    for c, v in enumerate(vehicles):
        xs, ys, es = 1 + 3 * c * steps, 1 + (3 * c + 1) * steps, 1 + (3 * c + 2) * steps
        leave = _leave_step(v, start_ts, step_s, steps)
        floor = float(min(v.floor_wh, v.soc_wh))  # a car under its floor is never discharged (it keeps its SoC)
        reach = v.soc_wh + v.max_charge_w * v.charge_efficiency * h * leave
        need = float(min(max(v.target_wh, floor), v.capacity_wh, reach)) if v.departure is not None else floor
        cap_wh = float(max(v.capacity_wh, v.soc_wh))
        discharge = v.max_discharge_w if v.soc_wh >= v.floor_wh else 0
        for t in range(steps):
            here = t < leave
            hi[xs + t] = v.max_charge_w if here else 0.0
            hi[ys + t] = discharge if here else 0.0
            lo[es + t] = need if t + 1 >= leave else floor
            hi[es + t] = cap_wh
            row = c * steps + t  # e[t] - e[t-1] - h (eta_c x - y / eta_d) = 0 (e[-1] = soc)
            eq_r += [row, row, row]
            eq_c += [es + t, xs + t, ys + t]
            eq_v += [1.0, -h * v.charge_efficiency, h / v.discharge_efficiency]
            if t:
                eq_r.append(row)
                eq_c.append(es + t - 1)
                eq_v.append(-1.0)
            eq_b.append(float(v.soc_wh) if t == 0 else 0.0)
    ub_r, ub_c, ub_v, ub_b = [], [], [], []
    row = 0
    for t in range(steps):
        if mask[t]:  # load + sum(x - y) - cap <= 0
            ub_r.append(row)
            ub_c.append(0)
            ub_v.append(-1.0)
            for c in range(n):
                ub_r += [row, row]
                ub_c += [1 + 3 * c * steps + t, 1 + (3 * c + 1) * steps + t]
                ub_v += [1.0, -1.0]
            ub_b.append(-float(load[t]))
            row += 1
        for c in range(n):  # no export: sum(y - x) <= max(load, 0)
            ub_r += [row, row]
            ub_c += [1 + 3 * c * steps + t, 1 + (3 * c + 1) * steps + t]
            ub_v += [-1.0, 1.0]
        ub_b.append(max(float(load[t]), 0.0))
        row += 1
    a_eq = coo_matrix((eq_v, (eq_r, eq_c)), shape=(n * steps, nv)).tocsr()
    a_ub = coo_matrix((ub_v, (ub_r, ub_c)), shape=(row, nv)).tocsr()
    bounds: list[tuple[float, float]] = [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]
    first = np.zeros(nv)
    first[0] = 1.0
    res = linprog(first, A_ub=a_ub, b_ub=ub_b, A_eq=a_eq, b_eq=eq_b, bounds=bounds, method="highs")
    if res.status != 0:  # departure needs the cars cannot meet even without shaving: plan no shaving
        return CapPlan(math.ceil(top), [0] * steps, 0.0, 0.0, f"infeasible: {res.message}")
    cap = math.ceil(res.x[0] - 1e-6)
    # At that cap, the least energy through the packs, charging early rather than late (a tie-break a thousandth of
    # the weight): the schedule has the energy in the packs before the load needs it.
    second = np.zeros(nv)
    for c in range(n):
        for t in range(steps):
            second[1 + 3 * c * steps + t] = 1.0 + 1e-3 * t / steps
            second[1 + (3 * c + 1) * steps + t] = 1.0
    bounds[0] = (float(lo[0]), float(cap))
    res2 = linprog(second, A_ub=a_ub, b_ub=ub_b, A_eq=a_eq, b_eq=eq_b, bounds=bounds, method="highs")
    x = res2.x if res2.status == 0 else res.x
    fleet = np.zeros(steps)
    charge = discharge_total = 0.0
    for c in range(n):
        xs, ys = 1 + 3 * c * steps, 1 + (3 * c + 1) * steps
        fleet += x[xs : xs + steps] - x[ys : ys + steps]
        charge += float(x[xs : xs + steps].sum()) * h
        discharge_total += float(x[ys : ys + steps].sum()) * h
    return CapPlan(cap, [round(f) for f in fleet], charge, discharge_total, "optimal")


@dataclass(frozen=True, slots=True)
class Pack:
    """A fleet as one pack: energy now and its bounds (Wh, stored), power limits (W, grid side), efficiencies."""

    energy_wh: float
    min_wh: float
    max_wh: float
    charge_w: float
    discharge_w: float
    charge_efficiency: float = 0.92
    discharge_efficiency: float = 0.92


def holds(cap_w: float, *, load_w: Sequence[float], billed: Sequence[bool], hours: Sequence[float], pack: Pack) -> bool:
    """Whether the pack holds the billed steps of ``load_w`` (each lasting ``hours``) to ``cap_w``, charging as much
    as the cap leaves room for whenever the load is under it (and freely where no charge bills)."""
    e = pack.energy_wh
    for w, billed_here, h in zip(load_w, billed, hours, strict=True):
        if billed_here and w > cap_w:
            need = w - cap_w
            if need > pack.discharge_w + 1e-9:
                return False
            e -= need * h / pack.discharge_efficiency
            if e < pack.min_wh - 1e-6:
                return False
        else:
            room = pack.charge_w if not billed_here else min(pack.charge_w, cap_w - w)
            e = min(pack.max_wh, e + max(room, 0.0) * h * pack.charge_efficiency)
    return True


def holdable_cap(
    *, load_w: Sequence[float], billed: Sequence[bool], hours: Sequence[float], pack: Pack, resolution_w: float = 10.0
) -> int:
    """The lowest cap (W, to ``resolution_w`` above it) the pack holds the billed steps to (bisection: holding is
    monotone in the cap)."""
    billed_loads = [w for w, b in zip(load_w, billed, strict=True) if b]
    if not billed_loads:
        return 0
    hi = max(billed_loads)
    lo = max(0.0, hi - pack.discharge_w)
    if holds(lo, load_w=load_w, billed=billed, hours=hours, pack=pack):
        return math.ceil(lo)
    while hi - lo > resolution_w:
        mid = (lo + hi) / 2
        if holds(mid, load_w=load_w, billed=billed, hours=hours, pack=pack):
            hi = mid
        else:
            lo = mid
    return math.ceil(hi)
