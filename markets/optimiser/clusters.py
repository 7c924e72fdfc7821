"""Aggregating vehicles with similar constraints into clusters the optimiser treats as one battery each.

Why it is safe (an *inner* approximation): each vehicle is described relative to its own pack, as fractions of
its capacity measured from its current state of charge: how far it may go down (to its floor), up (to full), how
much it must gain by departure, and its charge / discharge power per Wh of capacity. A cluster takes, for every one
of these, the **tightest** value among its members, the **earliest** departure, and both the lowest and the highest
efficiency, then scales by the members' total capacity K. Any schedule feasible for the cluster, split among the
members in proportion to their capacity, is feasible for every member: each member's own bounds are looser than the
cluster's per-Wh bounds, and its energy (a sum of terms monotone in efficiency) lies between the cluster's
low-efficiency and high-efficiency trajectories, which the optimiser bounds from below and above respectively.

How clusters are formed: vehicles are grouped by node, "below its floor" (may not discharge), departure hour
(rounded *earlier*: a vehicle is treated as leaving at the start of its departure hour) and power class (c-rate
rounded down to a power of two); each group is then cut into equal-count slices by state of charge, so members of a
cluster sit close in SoC and the tightest-member rule gives up little. The number of clusters is bounded by
``max_clusters`` (when the groups alone exceed it, departures are rounded to coarser blocks), so the problem size is
independent of the fleet size: 10,000 vehicles cost the LP the same as 200.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from markets.optimiser.problem import DEFAULT_DEGRADATION_USD_PER_WH, BidProblem, FloatArray
from vpp.types import VehicleSnapshot


@dataclass(frozen=True, slots=True)
class Cluster:
    """One aggregated battery. Energies are relative to the members' summed state of charge at the start (Wh)."""

    node: str
    vehicle_ids: tuple[int, ...]
    shares: FloatArray  # member capacity / K, sums to 1
    capacity_wh: float  # K
    soc_wh: float  # sum of members' SoC (for display only)
    avail_steps: int  # may hold power in steps [0, avail_steps)
    lower_start: FloatArray  # per step: least relative energy at the start of the step, after a full activation
    lower_end: FloatArray  # ... at the end of the step
    upper: float  # most relative energy (pack full)
    max_charge_w: float
    max_discharge_w: float
    eta_c: tuple[float, float]  # (lowest, highest) among members
    eta_d: tuple[float, float]
    degradation_usd_per_wh: float


@dataclass(frozen=True, slots=True)
class MustCharge:
    """A vehicle scheduled on its own: charge at full power from the start until its (reachable) target."""

    vehicle_id: int
    node: str
    charge_w: FloatArray


def build_clusters(problem: BidProblem) -> tuple[list[Cluster], list[MustCharge]]:
    vehicles = [v for v in problem.vehicles if _avail_steps(v, problem) > 0]
    if not vehicles:
        return [], []
    block = max(1, round(3600 / problem.step_s))  # departure rounded to the hour first
    while True:
        groups = _group(vehicles, problem, block)
        if len(groups) <= problem.max_clusters or block >= problem.steps:
            break
        block *= 2
    slices_left = max(problem.max_clusters, len(groups))
    total = len(vehicles)
    clusters: list[Cluster] = []
    must: list[MustCharge] = []
    for key, members in sorted(groups.items(), key=lambda kv: kv[0]):
        n_slices = max(1, min(len(members), math.floor(slices_left * len(members) / total)))
        members.sort(key=lambda v: v.soc_wh / v.capacity_wh)
        for chunk in np.array_split(np.arange(len(members)), n_slices):
            chunk_members = [members[i] for i in chunk]
            reach = _cluster_reach(chunk_members, key[2], problem)
            kept = [v for v in chunk_members if own_need_fraction(v, problem) <= reach + 1e-12]
            kept_ids = {v.vehicle_id for v in kept}
            must += [_must_charge(v, problem) for v in chunk_members if v.vehicle_id not in kept_ids]
            if kept:
                clusters.append(_aggregate(kept, key[2], problem))
    return clusters, must


def own_horizon_hours(v: VehicleSnapshot, problem: BidProblem) -> float:
    """Hours the vehicle can act on the step grid: whole steps before departure (or to departure past the end)."""
    avail = _avail_steps(v, problem)
    return avail * problem.step_h if avail < problem.steps else _hours_to_departure(v, problem.start)


def own_need_fraction(v: VehicleSnapshot, problem: BidProblem) -> float:
    """Energy the vehicle must gain by departure, per Wh of capacity, capped at what flat-out charging reaches."""
    if v.departure is None:
        return -math.inf
    reach = v.max_charge_w * v.charge_efficiency * own_horizon_hours(v, problem)
    return min(v.target_wh - v.soc_wh, reach, v.capacity_wh - v.soc_wh) / v.capacity_wh


def _cluster_reach(members: list[VehicleSnapshot], avail_steps: int, problem: BidProblem) -> float:
    """Energy per Wh the cluster's conservative bounds can add by its departure, flat out."""
    c_rate = min(v.max_charge_w / v.capacity_wh for v in members)
    eta = min(v.charge_efficiency for v in members)
    dep_h = (
        avail_steps * problem.step_h
        if avail_steps < problem.steps
        else min(_hours_to_departure(v, problem.start) for v in members)
    )
    head = min((v.capacity_wh - v.soc_wh) / v.capacity_wh for v in members)
    # The high-efficiency trajectory must stay below full while the low one reaches the need.
    eta_ratio = eta / max(v.charge_efficiency for v in members)
    return min(c_rate * eta * dep_h, head * eta_ratio)


def _must_charge(v: VehicleSnapshot, problem: BidProblem) -> MustCharge:
    need_wh = max(0.0, own_need_fraction(v, problem) * v.capacity_wh)
    charge = np.zeros(problem.steps)
    per_step = v.max_charge_w * v.charge_efficiency * problem.step_h
    for t in range(_avail_steps(v, problem)):
        if need_wh <= 0 or per_step <= 0:
            break
        take = min(per_step, need_wh)
        charge[t] = v.max_charge_w * take / per_step
        need_wh -= take
    return MustCharge(vehicle_id=v.vehicle_id, node=v.node, charge_w=charge)


def _avail_steps(v: VehicleSnapshot, problem: BidProblem) -> int:
    if v.departure is None:
        return problem.steps
    return max(0, min(problem.steps, math.floor((v.departure - problem.start).total_seconds() / problem.step_s)))


def _c_rate_class(v: VehicleSnapshot) -> int:
    rate = v.max_charge_w / v.capacity_wh
    return math.floor(math.log2(rate)) if rate > 0 else -99


def _group(
    vehicles: Sequence[VehicleSnapshot], problem: BidProblem, block: int
) -> dict[tuple[str, bool, int, int], list[VehicleSnapshot]]:
    groups: dict[tuple[str, bool, int, int], list[VehicleSnapshot]] = defaultdict(list)
    for v in vehicles:
        avail = _avail_steps(v, problem)
        avail_block = problem.steps if avail >= problem.steps else max(1, (avail // block) * block)
        groups[(v.node, v.soc_wh < v.floor_wh, avail_block, _c_rate_class(v))].append(v)
    return groups


def _hours_to_departure(v: VehicleSnapshot, start: datetime) -> float:
    return math.inf if v.departure is None else (v.departure - start).total_seconds() / 3600.0


def _aggregate(members: list[VehicleSnapshot], avail_steps: int, problem: BidProblem) -> Cluster:
    cap = np.array([v.capacity_wh for v in members], dtype=float)
    soc = np.array([v.soc_wh for v in members], dtype=float)
    floor = np.array([v.floor_wh for v in members], dtype=float)
    target = np.array([v.target_wh if v.departure is not None else -math.inf for v in members], dtype=float)
    below = soc < floor
    k = float(cap.sum())
    # Per-Wh bounds, tightest member wins. A vehicle below its floor may not go below where it is now.
    lo = k * float(np.max(np.where(below, 0.0, (floor - soc) / cap)))
    hi = k * float(np.min((cap - soc) / cap))
    need = k * float(np.max((target - soc) / cap))
    c_rate = float(np.min([v.max_charge_w for v in members] / cap))
    d_rate = float(np.min([0 if b else v.max_discharge_w for v, b in zip(members, below, strict=True)] / cap))
    eta_c = (min(v.charge_efficiency for v in members), max(v.charge_efficiency for v in members))
    eta_d = (min(v.discharge_efficiency for v in members), max(v.discharge_efficiency for v in members))
    max_charge = k * c_rate
    h = problem.step_h
    if avail_steps < problem.steps:
        dep_h = avail_steps * h  # grouped departure: the start of the departure block (never later than real)
    else:
        dep_h = min(_hours_to_departure(v, problem.start) for v in members)
    lower_start, lower_end = _lower_bounds(lo, min(need, hi), max_charge * eta_c[0], dep_h, problem)
    costs = problem.degradation_usd_per_wh or {}
    deg = float(np.dot(cap, [costs.get(v.vehicle_id, DEFAULT_DEGRADATION_USD_PER_WH) for v in members]) / k)
    return Cluster(
        node=members[0].node,
        vehicle_ids=tuple(v.vehicle_id for v in members),
        shares=cap / k,
        capacity_wh=k,
        soc_wh=float(soc.sum()),
        avail_steps=avail_steps,
        lower_start=lower_start,
        lower_end=lower_end,
        upper=hi,
        max_charge_w=max_charge,
        max_discharge_w=k * d_rate,
        eta_c=eta_c,
        eta_d=eta_d,
        degradation_usd_per_wh=deg,
    )


def _lower_bounds(
    lo: float, need: float, charge_wh_per_h: float, dep_h: float, problem: BidProblem
) -> tuple[FloatArray, FloatArray]:
    """Least relative energy at each step boundary: above the floor, and above the departure need (the energy from
    which charging flat out still reaches the target by departure). A target that cannot be reached even so is
    clamped to what flat-out charging reaches (the driver gets the most the car can take)."""
    h = problem.step_h
    t = np.arange(problem.steps, dtype=float)
    if not (math.isfinite(dep_h) and math.isfinite(need)):
        return np.full(problem.steps, lo), np.full(problem.steps, lo)
    need = min(need, charge_wh_per_h * dep_h)
    start = np.maximum(lo, need - charge_wh_per_h * (dep_h - t * h))
    end = np.maximum(lo, need - charge_wh_per_h * (dep_h - (t + 1) * h))
    return start, end
