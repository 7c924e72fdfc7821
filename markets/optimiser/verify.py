"""Brute-force deliverability check of a bid schedule, vehicle by vehicle, independent of any optimiser.

Every vehicle's plan (its share of its cluster's schedule) is simulated step by step with the vehicle's *own*
capacity, efficiencies, power limits, floor and departure. At the start and end of every step, the vehicle must
survive a full activation of all the up capacity it holds for the product's sustain time without going below its
floor or its departure need (the energy from which flat-out charging still reaches the target by departure), and a
full activation of all its down capacity without overfilling. The plans must add up to the bids exactly.
"""

from __future__ import annotations

import math

import numpy as np

from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser.clusters import own_horizon_hours, own_need_fraction
from markets.optimiser.problem import BidProblem, BidSchedule, VehiclePlan

TOL_WH = 1e-3
TOL_W = 1e-3


def deliverability_violations(problem: BidProblem, schedule: BidSchedule, limit: int = 20) -> list[str]:
    found: list[str] = []
    totals = {p.code: np.zeros(problem.steps) for p in problem.products}
    for v in problem.vehicles:
        plan = schedule.plan(v.vehicle_id)
        if plan is None:
            continue
        for code in totals:
            totals[code] += plan.reserved_w[code]
        found += vehicle_violations(problem, v, plan)
        if len(found) >= limit:
            return found[:limit]
    for prod in problem.products:
        steps = prod.market_interval_steps
        for m, q in enumerate(schedule.quantity_w[prod.code]):
            held = totals[prod.code][m * steps : (m + 1) * steps]
            if np.any(np.abs(held - q) > max(1.0, 1e-6 * q)):
                found.append(f"{prod.code} interval {m}: vehicles hold {held.min():.0f}..{held.max():.0f} W, bid {q}")
    return found


def vehicle_violations(problem: BidProblem, v: VehicleSnapshot, plan: VehiclePlan) -> list[str]:
    """Simulate one vehicle's plan alone; every broken power, floor, departure or fullness rule, step by step."""
    found: list[str] = []
    h = problem.step_h
    below = v.soc_wh < v.floor_wh
    floor = float(v.soc_wh) if below else float(v.floor_wh)
    dep_h = math.inf if v.departure is None else own_horizon_hours(v, problem)
    e = float(v.soc_wh)
    for t in range(problem.steps):
        ch, dis = float(plan.charge_w[t]), float(plan.discharge_w[t])
        up = sum(float(plan.reserved_w[p.code][t]) for p in problem.products if p.up)
        down = sum(float(plan.reserved_w[p.code][t]) for p in problem.products if p.down)
        active = ch + dis + up + down > TOL_W
        if active and (t + 1) * h > dep_h + 1e-9:
            found.append(f"vehicle {v.vehicle_id} step {t}: scheduled after its departure")
        if ch < -TOL_W or dis < -TOL_W:
            found.append(f"vehicle {v.vehicle_id} step {t}: negative power")
        if ch - dis + down > v.max_charge_w + TOL_W:
            found.append(f"vehicle {v.vehicle_id} step {t}: charge side {ch - dis + down:.0f} > {v.max_charge_w}")
        max_dis = 0 if below else v.max_discharge_w
        if dis - ch + up > max_dis + TOL_W:
            found.append(f"vehicle {v.vehicle_id} step {t}: discharge side {dis - ch + up:.0f} > {max_dis}")
        draw = sum(
            float(plan.reserved_w[p.code][t]) * p.sustain_h / v.discharge_efficiency for p in problem.products if p.up
        )
        fill = sum(
            float(plan.reserved_w[p.code][t]) * p.sustain_h * v.charge_efficiency for p in problem.products if p.down
        )
        drift = sum(
            float(plan.reserved_w[p.code][t])
            * (p.up_activation / v.discharge_efficiency - p.down_activation * v.charge_efficiency)
            for p in problem.products
        )
        e_end = e + h * (ch * v.charge_efficiency - dis / v.discharge_efficiency - drift)
        if active:
            for when, energy in ((t * h, e), ((t + 1) * h, e_end)):
                least = max(floor, _departure_need(v, problem, dep_h, when))
                if energy - draw < least - TOL_WH:
                    found.append(
                        f"vehicle {v.vehicle_id} step {t}: {energy - draw:.1f} Wh after full up activation "
                        f"< {least:.1f} Wh (floor / departure need)"
                    )
                if energy + fill > v.capacity_wh + TOL_WH:
                    found.append(f"vehicle {v.vehicle_id} step {t}: overfills after full down activation")
        e = e_end
    return found


def _departure_need(v: VehicleSnapshot, problem: BidProblem, dep_h: float, when_h: float) -> float:
    """Least energy at ``when_h`` from which charging flat out still reaches the target by departure (capped at
    what flat-out charging from the start could reach, as the optimiser does for an unreachable target)."""
    if not math.isfinite(dep_h):
        return -math.inf
    rate = v.max_charge_w * v.charge_efficiency
    reachable_target = v.soc_wh + own_need_fraction(v, problem) * v.capacity_wh
    return reachable_target - rate * max(0.0, dep_h - when_h)
