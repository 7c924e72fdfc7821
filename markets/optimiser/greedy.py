"""Greedy fallback scheduler: simple, fast, always feasible, never optimal.

Every cluster (see ``clusters``) charges as soon as it can towards its departure need (the baseline). Then, market
interval by market interval in time order and product by product from the best forecast price down, each cluster
offers the most it can hold for the whole market interval given what it already holds: power headroom around its
baseline, and energy slack, at every later step, above its floor / departure need after a full activation (and below
full), with the expected drift of the capacity taken into account. The fleet total is rounded *down* to the increment
(dropped below the minimum) and shared among the clusters in proportion to what each could hold; holding less never
breaks a constraint that holding more respected, so the result is deliverable.
Offer price: the marginal delivery cost (degradation on expected throughput and the energy of the expected drift).
"""

from __future__ import annotations

import math
import time

import numpy as np

from markets.optimiser.clusters import Cluster, build_clusters
from markets.optimiser.problem import BidProblem, BidSchedule, FloatArray, ProductSpec
from markets.optimiser.result import assemble_schedule, must_charge_load


class GreedyScheduler:
    name = "greedy"

    def schedule(self, problem: BidProblem) -> BidSchedule:
        problem.validate()
        started = time.perf_counter()
        clusters, must = build_clusters(problem)
        T, K = problem.steps, len(problem.products)
        pp = np.zeros((len(clusters), T))
        pm = np.zeros((len(clusters), T))
        r = np.zeros((len(clusters), T, K))
        for ci, c in enumerate(clusters):
            pp[ci] = _baseline(c, problem)
        fixed = must_charge_load(problem, must)
        offer: dict[str, list[float | None]] = {
            p.code: [_marginal_cost(problem, p, clusters, m) for m in range(len(p.prices))] for p in problem.products
        }
        for t0 in range(problem.first_biddable_step, T):
            for k in self._order(problem, t0, offer):
                prod = problem.products[k]
                window = np.arange(t0, t0 + prod.market_interval_steps)
                caps = np.array([_max_hold(c, ci, k, window, problem, pp, pm, r) for ci, c in enumerate(clusters)])
                total = float(caps.sum())
                if prod.is_peak_shaving:
                    total = min(total, _excess(problem, prod, clusters, pp, pm, r, k, t0, fixed))
                qty = math.floor(total / prod.increment_w) * prod.increment_w
                if qty < max(prod.min_w, 1) or caps.sum() <= 0:
                    continue
                r[:, window, k] += (caps * qty / caps.sum())[:, None]
        return assemble_schedule(
            problem,
            clusters,
            pp,
            pm,
            r,
            must=must,
            offer_prices=offer,
            scheduler=self.name,
            status="Feasible",
            solve_s=time.perf_counter() - started,
        )

    @staticmethod
    def _order(problem: BidProblem, t: int, cost: dict[str, list[float | None]]) -> list[int]:
        """Products whose market interval starts at step t and pay more than they cost, peak shaving first, then by
        forecast price."""
        starting = []
        for k, p in enumerate(problem.products):
            if t % p.market_interval_steps:
                continue
            price = p.prices[t // p.market_interval_steps]
            if p.is_peak_shaving:
                starting.append((math.inf, k))
            elif price is not None and price > (cost[p.code][t // p.market_interval_steps] or 0.0):
                starting.append((price, k))
        return [k for _, k in sorted(starting, reverse=True)]


def _baseline(c: Cluster, problem: BidProblem) -> FloatArray:
    """Charge as soon as possible to half-way between the highest lower bound the cluster must meet and full: the
    margin above it is what up capacity and its drift can then use, the room below full what down capacity uses."""
    h, A = problem.step_h, c.avail_steps
    need = float(np.max(c.lower_end[:A])) if A else 0.0
    goal = need + 0.5 * max(0.0, c.upper * c.eta_c[0] / c.eta_c[1] - need)
    out = np.zeros(problem.steps)
    e_lo = e_hi = 0.0
    for t in range(A):
        want = max(0.0, (goal - e_lo) / (c.eta_c[0] * h))
        room = max(0.0, (c.upper - e_hi) / (c.eta_c[1] * h))
        out[t] = min(c.max_charge_w, want, room)
        e_lo += h * c.eta_c[0] * out[t]
        e_hi += h * c.eta_c[1] * out[t]
    return out


def _trajectories(
    c: Cluster, ci: int, problem: BidProblem, pp: FloatArray, pm: FloatArray, r: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per available step of cluster ``ci``: the energy gained since the start, at each step's start and end, on
    the low- then the high-efficiency bound; then what a sustained up activation of its reserves would draw and a
    down activation would fill."""
    h, A = problem.step_h, c.avail_steps
    a_up = np.array([p.up_activation for p in problem.products])
    a_dn = np.array([p.down_activation for p in problem.products])
    lo_step = h * (
        pp[ci, :A] * c.eta_c[0] - pm[ci, :A] / c.eta_d[0] - r[ci, :A] @ (a_up / c.eta_d[0] - a_dn * c.eta_c[0])
    )
    hi_step = h * (
        pp[ci, :A] * c.eta_c[1] - pm[ci, :A] / c.eta_d[1] - r[ci, :A] @ (a_up / c.eta_d[1] - a_dn * c.eta_c[1])
    )
    elo_end, ehi_end = np.cumsum(lo_step), np.cumsum(hi_step)
    elo_start = np.concatenate(([0.0], elo_end[:-1]))
    ehi_start = np.concatenate(([0.0], ehi_end[:-1]))
    up = np.array([p.up for p in problem.products], dtype=float)
    dn = np.array([p.down for p in problem.products], dtype=float)
    sus = np.array([p.sustain_h for p in problem.products])
    draw = r[ci, :A] @ (up * sus / c.eta_d[0])
    fill = r[ci, :A] @ (dn * sus * c.eta_c[1])
    return elo_start, elo_end, ehi_start, ehi_end, draw, fill


def _max_hold(
    c: Cluster, ci: int, k: int, window: np.ndarray, problem: BidProblem, pp: FloatArray, pm: FloatArray, r: FloatArray
) -> float:
    prod: ProductSpec = problem.products[k]
    A, h = c.avail_steps, problem.step_h
    if window[-1] >= A or (prod.node is not None and prod.node != c.node):
        return 0.0
    q = pp[ci, window] - pm[ci, window]
    limits = [math.inf]
    ups = np.array([p.up for p in problem.products], dtype=float)
    dns = np.array([p.down for p in problem.products], dtype=float)
    if prod.up:
        limits.append(float(np.min(c.max_discharge_w + q - r[ci, window] @ ups)))
    if prod.down:
        limits.append(float(np.min(c.max_charge_w - q - r[ci, window] @ dns)))
    elo_s, elo_e, ehi_s, ehi_e, draw, fill = _trajectories(c, ci, problem, pp, pm, r)
    # How much one more W held over the window lowers the low trajectory / raises the high one, per step.
    drift_lo = max(0.0, prod.up_activation / c.eta_d[0] - prod.down_activation * c.eta_c[0]) * h
    drift_hi = max(0.0, prod.down_activation * c.eta_c[1] - prod.up_activation / c.eta_d[1]) * h
    steps = np.arange(A)
    in_window = (steps >= window[0]) & (steps <= window[-1])
    cum_end = np.clip(steps - window[0] + 1, 0, len(window)).astype(float)
    cum_start = np.clip(steps - window[0], 0, len(window)).astype(float)
    draw_coef = in_window * (prod.sustain_h / c.eta_d[0] if prod.up else 0.0)
    fill_coef = in_window * (prod.sustain_h * c.eta_c[1] if prod.down else 0.0)
    for slack, coef in (
        (elo_e - draw - c.lower_end[:A], draw_coef + drift_lo * cum_end),
        (elo_s - draw - c.lower_start[:A], draw_coef + drift_lo * cum_start),
        (c.upper - ehi_e - fill, fill_coef + drift_hi * cum_end),
        (c.upper - ehi_s - fill, fill_coef + drift_hi * cum_start),
    ):
        pos = coef > 0
        if pos.any():
            limits.append(float(np.min(slack[pos] / coef[pos])))
    return max(0.0, min(limits) * (1 - 1e-9))


def _excess(
    problem: BidProblem,
    prod: ProductSpec,
    clusters: list[Cluster],
    pp: FloatArray,
    pm: FloatArray,
    r: FloatArray,
    k: int,
    t: int,
    fixed: dict[str, FloatArray],
) -> float:
    """Site meter above the threshold at step t with the fleet's plan, minus shaving already held."""
    assert prod.site_load_w is not None
    at_node = [ci for ci, c in enumerate(clusters) if prod.node in (None, c.node)]
    q = float((pp[at_node, t] - pm[at_node, t]).sum()) + sum(
        float(load[t]) for node, load in fixed.items() if prod.node in (None, node)
    )
    return max(0.0, float(prod.site_load_w[t]) + q - prod.site_threshold_w - float(r[at_node, t, k].sum()))


def _marginal_cost(problem: BidProblem, prod: ProductSpec, clusters: list[Cluster], m: int) -> float | None:
    if prod.is_peak_shaving:
        return prod.demand_charge_usd_per_w * 1000.0
    if not clusters:
        return None
    deg = float(np.mean([c.degradation_usd_per_wh for c in clusters]))
    steps = prod.market_interval_steps
    ep = (
        float(np.mean(problem.energy_price[m * steps : (m + 1) * steps])) / 1e6
        if problem.energy_price is not None
        else 0.0
    )
    per_w_h = deg * (prod.up_activation + prod.down_activation) + ep * (prod.down_activation - prod.up_activation)
    return max(0.0, per_w_h * 1e6)
