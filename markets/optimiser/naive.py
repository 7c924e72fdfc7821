"""The naive bid the optimiser is measured against: a fixed share of each plugged-in car's discharge power.

Every car charges flat out from the start until it holds its departure need (as a car without smart charging
would), and offers ``share`` of its discharge power (none below its floor), split equally over the priced products,
in every whole market interval it is plugged in for. The fleet's offer per interval is rounded down to the increment
(dropped below the minimum) and the cars' shares scaled to it. It ignores energy: a car may be asked to hold capacity
its pack cannot sustain. With ``deliverable=True`` the same bid is checked car by car with
``verify.vehicle_violations`` (the check the optimisers pass) and the cars that would break a rule offer nothing,
so the naive figure compared against is one the fleet could honour.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser.clusters import _avail_steps, _must_charge, own_need_fraction
from markets.optimiser.problem import BidProblem, BidSchedule, FloatArray, ProductBid, VehiclePlan
from markets.optimiser.result import _peak_value
from markets.optimiser.verify import vehicle_violations


@dataclass(slots=True)
class _Plans:
    plans: dict[int, VehiclePlan]

    def plan(self, vehicle_id: int) -> VehiclePlan | None:
        return self.plans.get(vehicle_id)


class NaiveScheduler:
    def __init__(self, share: float = 0.3, *, deliverable: bool = True) -> None:
        self.share = share
        self.deliverable = deliverable
        self.name = "naive-deliverable" if deliverable else "naive"

    def schedule(self, problem: BidProblem) -> BidSchedule:
        problem.validate()
        started = time.perf_counter()
        plans = {v.vehicle_id: self._plan(problem, v) for v in problem.vehicles if _avail_steps(v, problem) > 0}
        dropped = 0
        if self.deliverable:
            vehicles = [v for v in problem.vehicles if v.vehicle_id in plans]
            for v in vehicles:
                plan = plans[v.vehicle_id]
                if vehicle_violations(problem, v, plan):
                    plan.reserved_w = {code: np.zeros(problem.steps) for code in plan.reserved_w}
                    dropped += 1
        quantities = self._round_to_rules(problem, plans)
        schedule = self._assemble(problem, plans, quantities, time.perf_counter() - started)
        if dropped:
            schedule.notes.append(f"{dropped} cars offer nothing: their share would break a floor or departure need")
        return schedule

    def _plan(self, problem: BidProblem, v: VehicleSnapshot) -> VehiclePlan:
        charge = _must_charge(v, problem).charge_w if math.isfinite(own_need_fraction(v, problem)) else None
        charge = np.zeros(problem.steps) if charge is None else charge
        priced = [p for p in problem.products if not p.is_peak_shaving]
        offer = 0.0 if v.soc_wh < v.floor_wh or not priced else self.share * v.max_discharge_w / len(priced)
        avail = _avail_steps(v, problem)
        reserved: dict[str, FloatArray] = {}
        for p in problem.products:
            held = np.zeros(problem.steps)
            if not p.is_peak_shaving:
                for m, price in enumerate(p.prices):
                    lo, hi = m * p.market_interval_steps, (m + 1) * p.market_interval_steps
                    if price is not None and lo >= problem.first_biddable_step and hi <= avail:
                        held[lo:hi] = offer
            reserved[p.code] = held
        return VehiclePlan(v.vehicle_id, charge, np.zeros(problem.steps), reserved)

    @staticmethod
    def _round_to_rules(problem: BidProblem, plans: dict[int, VehiclePlan]) -> dict[str, list[int]]:
        """Fleet offer per market interval rounded down to the increment; every car's share scaled to match."""
        out: dict[str, list[int]] = {}
        for p in problem.products:
            steps = p.market_interval_steps
            total = sum((plan.reserved_w[p.code] for plan in plans.values()), np.zeros(problem.steps))
            qs = []
            for m in range(len(p.prices)):
                have = float(total[m * steps])
                q = math.floor(have / p.increment_w) * p.increment_w
                q = q if q >= max(p.min_w, 1) else 0
                qs.append(q)
                for plan in plans.values():
                    plan.reserved_w[p.code][m * steps : (m + 1) * steps] *= q / have if have > 0 else 0.0
            out[p.code] = qs
        return out

    def _assemble(
        self, problem: BidProblem, plans: dict[int, VehiclePlan], quantities: dict[str, list[int]], took: float
    ) -> BidSchedule:
        h = problem.step_h
        bids: list[ProductBid] = []
        revenue = 0.0
        for p in problem.products:
            for m, q in enumerate(quantities[p.code]):
                price = p.prices[m]
                if q <= 0 or price is None:
                    continue
                revenue += price * q / 1e6 * p.market_interval_steps * h
                start = problem.step_start(m * p.market_interval_steps)
                end = problem.step_start((m + 1) * p.market_interval_steps)
                bids.append(ProductBid(p.code, m, start, end, q, 0.0, price))
        ep = np.asarray(problem.energy_price if problem.energy_price is not None else np.zeros(problem.steps)) / 1e6
        costs = problem.degradation_usd_per_wh or {}
        cost = 0.0
        fixed: dict[str, FloatArray] = {}
        by_id = {v.vehicle_id: v for v in problem.vehicles}
        for vid, plan in plans.items():
            v = by_id[vid]
            deg = costs.get(vid, v.degradation_cost_per_kwh / 1000.0)
            throughput = plan.charge_w + sum(
                plan.reserved_w[p.code] * (p.up_activation + p.down_activation) for p in problem.products
            )
            net = plan.charge_w + sum(
                plan.reserved_w[p.code] * (p.down_activation - p.up_activation) for p in problem.products
            )
            cost += h * float(np.dot(throughput, np.full(problem.steps, deg)) + np.dot(net, ep))
            fixed[v.node] = fixed.get(v.node, np.zeros(problem.steps)) + plan.charge_w
        empty = np.zeros((0, problem.steps))
        peak = _peak_value(problem, [], empty, empty, np.zeros((0, problem.steps, len(problem.products))), fixed)
        return BidSchedule(
            scheduler=self.name,
            status="Feasible" if self.deliverable else "unchecked",
            bids=bids,
            quantity_w=quantities,
            objective_usd=revenue + peak - cost,
            revenue_usd=revenue + peak,
            cost_usd=cost,
            solve_s=took,
            clusters=0,
            envelope={},
            solution=_Plans(plans),
            capacity_revenue_usd=revenue,
            peak_value_usd=peak,
        )
