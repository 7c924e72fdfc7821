"""Turning a cluster-level solution into bids, figures, the flexibility envelope and per-vehicle plans."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from markets.optimiser.clusters import Cluster, MustCharge
from markets.optimiser.problem import BidProblem, BidSchedule, FloatArray, ProductBid, VehiclePlan


@dataclass(slots=True)
class ClusterSolution:
    """Operating point and capacity per cluster (arrays [cluster, step] and [cluster, step, product])."""

    clusters: list[Cluster]
    charge_w: FloatArray
    discharge_w: FloatArray
    reserved_w: FloatArray
    product_codes: list[str]
    must: list[MustCharge] = field(default_factory=list)
    _index: dict[int, tuple[int, int]] = field(default_factory=dict)
    _must: dict[int, MustCharge] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for ci, c in enumerate(self.clusters):
            for j, vid in enumerate(c.vehicle_ids):
                self._index[vid] = (ci, j)
        self._must = {m.vehicle_id: m for m in self.must}

    def plan(self, vehicle_id: int) -> VehiclePlan | None:
        """The vehicle's share (its capacity / the cluster's) of its cluster's schedule; None if not scheduled."""
        where = self._index.get(vehicle_id)
        if where is None:
            fixed = self._must.get(vehicle_id)
            if fixed is None:
                return None
            zero = np.zeros_like(fixed.charge_w)
            return VehiclePlan(vehicle_id, fixed.charge_w, zero, dict.fromkeys(self.product_codes, zero))
        ci, j = where
        share = float(self.clusters[ci].shares[j])
        return VehiclePlan(
            vehicle_id=vehicle_id,
            charge_w=self.charge_w[ci] * share,
            discharge_w=self.discharge_w[ci] * share,
            reserved_w={code: self.reserved_w[ci, :, k] * share for k, code in enumerate(self.product_codes)},
        )


def assemble_schedule(
    problem: BidProblem,
    clusters: list[Cluster],
    pp: FloatArray,
    pm: FloatArray,
    r: FloatArray,
    *,
    must: list[MustCharge],
    offer_prices: Mapping[str, list[float | None]],
    scheduler: str,
    status: str,
    solve_s: float,
) -> BidSchedule:
    h = problem.step_h
    codes = [p.code for p in problem.products]
    quantities: dict[str, list[int]] = {}
    bids: list[ProductBid] = []
    revenue = 0.0
    for k, prod in enumerate(problem.products):
        steps = prod.market_interval_steps
        per_step = r[:, :, k].sum(axis=0) if clusters else np.zeros(problem.steps)
        qs = [round(float(per_step[m * steps : (m + 1) * steps].min())) for m in range(len(prod.prices))]
        quantities[prod.code] = qs
        for m, q in enumerate(qs):
            if q <= 0:
                continue
            forecast = prod.prices[m]
            if not prod.is_peak_shaving and forecast is not None:
                revenue += forecast * q / 1e6 * steps * h
            offer = offer_prices.get(prod.code, [None] * len(qs))[m]
            start = problem.step_start(m * steps)
            bids.append(
                ProductBid(
                    product=prod.code,
                    market_interval=m,
                    start=start,
                    end=start + timedelta(seconds=problem.step_s * steps),
                    quantity_w=q,
                    price=float(offer if offer is not None else (forecast or 0.0)),
                    forecast_price=forecast,
                )
            )
    fixed = must_charge_load(problem, must)
    capacity_revenue = revenue
    peak_value = _peak_value(problem, clusters, pp, pm, r, fixed)
    revenue += peak_value
    cost = _cost(problem, clusters, pp, pm, r) + _must_cost(problem, must)
    solution = ClusterSolution(clusters, pp, pm, r, codes, must)
    return BidSchedule(
        scheduler=scheduler,
        status=status,
        bids=bids,
        quantity_w=quantities,
        objective_usd=revenue - cost,
        revenue_usd=revenue,
        cost_usd=cost,
        solve_s=solve_s,
        clusters=len(clusters),
        capacity_revenue_usd=capacity_revenue,
        peak_value_usd=peak_value,
        envelope=_envelope(problem, clusters, pp, pm, r, h, fixed),
        solution=solution,
    )


def _cost(problem: BidProblem, clusters: list[Cluster], pp: FloatArray, pm: FloatArray, r: FloatArray) -> float:
    if not clusters:
        return 0.0
    h = problem.step_h
    ep = np.asarray(problem.energy_price if problem.energy_price is not None else np.zeros(problem.steps)) / 1e6
    deg = np.array([c.degradation_usd_per_wh for c in clusters])[:, None]
    a_up = np.array([p.up_activation for p in problem.products])
    a_dn = np.array([p.down_activation for p in problem.products])
    throughput = pp + pm + (r * (a_up + a_dn)).sum(axis=2)
    net_energy = pp - pm + (r * (a_dn - a_up)).sum(axis=2)
    return float(h * ((deg * throughput).sum() + (ep[None, :] * net_energy).sum()))


def must_charge_load(problem: BidProblem, must: list[MustCharge]) -> dict[str, FloatArray]:
    """Per node, the charging of the vehicles scheduled on their own (fixed load the optimiser works around)."""
    load: dict[str, FloatArray] = {}
    for m in must:
        load[m.node] = load.get(m.node, np.zeros(problem.steps)) + m.charge_w
    return load


def _must_cost(problem: BidProblem, must: list[MustCharge]) -> float:
    ep = np.asarray(problem.energy_price if problem.energy_price is not None else np.zeros(problem.steps)) / 1e6
    costs = problem.degradation_usd_per_wh or {}
    from markets.optimiser.problem import DEFAULT_DEGRADATION_USD_PER_WH

    return float(
        sum(
            problem.step_h * float(np.dot(m.charge_w, ep + costs.get(m.vehicle_id, DEFAULT_DEGRADATION_USD_PER_WH)))
            for m in must
        )
    )


def _peak_value(
    problem: BidProblem,
    clusters: list[Cluster],
    pp: FloatArray,
    pm: FloatArray,
    r: FloatArray,
    fixed: dict[str, FloatArray],
) -> float:
    """Demand charge avoided against the site without the fleet: the peak excess of the site load alone minus the
    peak excess with the fleet's operating point (fixed must-charge load included) and the shaving held. Negative
    when the fleet's own charging sets a new peak, so it is the same trade-off the MILP prices with ``X``."""
    value = 0.0
    for k, prod in enumerate(problem.products):
        if not prod.is_peak_shaving or prod.site_load_w is None:
            continue
        at_node = [ci for ci, c in enumerate(clusters) if prod.node is None or c.node == prod.node]
        q = (pp[at_node] - pm[at_node]).sum(axis=0) if at_node else np.zeros(problem.steps)
        q = q + sum((load for node, load in fixed.items() if prod.node in (None, node)), np.zeros(problem.steps))
        shave = r[at_node, :, k].sum(axis=0) if at_node else np.zeros(problem.steps)
        window = slice(problem.first_biddable_step, problem.steps)
        site = np.asarray(prod.site_load_w, dtype=float)[window] - prod.site_threshold_w
        alone = float(np.max(np.maximum(site, 0.0), initial=0.0))
        after = float(np.max(np.maximum(site + q[window] - shave[window], 0.0), initial=0.0))
        value += prod.demand_charge_usd_per_w * (alone - after)
    return value


def _envelope(
    problem: BidProblem,
    clusters: list[Cluster],
    pp: FloatArray,
    pm: FloatArray,
    r: FloatArray,
    h: float,
    fixed: dict[str, FloatArray],
) -> dict[str, list[float]]:
    """Per step: power the plugged-in fleet could still move up / down from its operating point, the operating
    point itself, energy in the packs (low-efficiency trajectory) and the capacity bid per product."""
    steps = problem.steps
    up, down, energy = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for ci, c in enumerate(clusters):
        A = c.avail_steps
        q = pp[ci, :A] - pm[ci, :A]
        up[:A] += c.max_discharge_w + q
        down[:A] += c.max_charge_w - q
        drift = sum(
            r[ci, :A, k] * (p.up_activation / c.eta_d[0] - p.down_activation * c.eta_c[0])
            for k, p in enumerate(problem.products)
        )
        delta = np.cumsum(h * (pp[ci, :A] * c.eta_c[0] - pm[ci, :A] / c.eta_d[0] - drift))
        energy[:A] += c.soc_wh + delta
    out = {
        "up_w": up.round().tolist(),
        "down_w": down.round().tolist(),
        "baseline_w": (((pp - pm).sum(axis=0) if clusters else np.zeros(steps)) + sum(fixed.values(), np.zeros(steps)))
        .round()
        .tolist(),
        "energy_wh": energy.round().tolist(),
    }
    for k, p in enumerate(problem.products):
        out[f"bid_{p.code}_w"] = (r[:, :, k].sum(axis=0) if clusters else np.zeros(steps)).round().tolist()
    return out
