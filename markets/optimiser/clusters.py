"""Aggregating vehicles with similar constraints into clusters the optimiser treats as one battery each.

The aggregate is an *inner* (conservative) approximation, never an outer one. A cluster of K Wh of packs is a
battery whose every bound is ``K x`` the tightest of its members' bounds *per Wh of capacity*: how far it may go
down (to its floor), up (to full), how much it must gain by departure, its charge / discharge power; it is plugged
in until its earliest member leaves, and its energy is tracked along both its lowest- and highest-efficiency
trajectories. A cluster schedule is split among the members in proportion to capacity (``shares``); each member's
own per-Wh bounds are looser than the cluster's, so every member's share is feasible for that member, and the bids
(sums of the shares) are deliverable. ``verify.deliverability_violations`` re-checks this car by car.

Why not simply sum the members' limits (cluster power = sum of powers, energy window = sum of windows)? That is
exact only when members are alike per Wh; otherwise it is an *outer* approximation and can over-offer: a nearly full
car and a nearly empty one of the same model sum to a battery that can charge at twice one car's power until the
pair is full, but the full car stops after the first interval. So summing is unsafe in general. We get the benefit
of summing the safe way: when members are identical per Wh (same model c-rate, efficiency, departure interval, SoC,
floor and need fractions) the tightest-per-Wh bound times K *is* the sum of their bounds, so the aggregation is
exact, and it loses only the spread of each quantity within a cluster. Clusters are therefore cut to be tight:

1. Vehicles whose departure need equals what flat-out charging reaches have no flexibility at all: they are taken
   out and charged flat out on their own (``MustCharge``, a fixed load for the optimiser).
2. The rest are grouped by node and by "below its floor" (may not discharge), then split recursively (median cut):
   the cluster with the largest capacity-weighted spread is cut at the median of its most spread feature, until
   ``max_clusters``. Features: SoC, floor and need fractions, log charge and discharge c-rate, efficiencies,
   departure (the hours the car can act) and charging slack (hours to departure minus hours of flat-out charging
   its need takes). The weights express each spread as the fraction of a cluster's flexibility it costs.
3. A member whose need the cluster's tightest bounds cannot reach by the cluster's departure is charged on its own.

The LP size grows with the number of clusters, not of vehicles: 10,000 vehicles cost the same as 500 once every
cluster is tight.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser.problem import DEFAULT_DEGRADATION_USD_PER_WH, BidProblem, FloatArray

# Weight of each feature's range in a cluster's spread score (see _features).
# Power is what the products buy, so c-rate spread weighs most; energy-fraction spreads (SoC, floor, need) next.
_WEIGHTS = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0])


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

    @property
    def single_trajectory(self) -> bool:
        """All members share both efficiencies: the low and high energy trajectories coincide."""
        return self.eta_c[0] == self.eta_c[1] and self.eta_d[0] == self.eta_d[1]


@dataclass(frozen=True, slots=True)
class MustCharge:
    """A vehicle scheduled on its own: charge at full power from the start until its (reachable) target."""

    vehicle_id: int
    node: str
    charge_w: FloatArray


def build_clusters(problem: BidProblem) -> tuple[list[Cluster], list[MustCharge]]:
    vehicles = [v for v in problem.vehicles if _avail_steps(v, problem) > 0]
    must = [_must_charge(v, problem) for v in vehicles if _inflexible(v, problem)]
    fixed = {m.vehicle_id for m in must}
    pending = [v for v in vehicles if v.vehicle_id not in fixed]
    clusters: list[Cluster] = []
    budget = max(1, problem.max_clusters)
    # Members a cluster's tightest bounds cannot carry to their need are clustered again among themselves (they
    # are alike: high need for their slack), with what is left of the budget; the last pass charges them alone.
    for last in (False, False, True):
        share = budget if last else max(1, (budget * 3) // 4)
        rejected: list[VehicleSnapshot] = []
        for members in split_clusters(pending, problem, share):
            avail = min(_avail_steps(v, problem) for v in members)
            reach = _cluster_reach(members, avail, problem)
            kept = [v for v in members if own_need_fraction(v, problem) <= reach + 1e-12]
            kept_ids = {v.vehicle_id for v in kept}
            rejected += [v for v in members if v.vehicle_id not in kept_ids]
            if kept:
                clusters.append(_aggregate(kept, avail, problem))
        budget = max(1, problem.max_clusters - len(clusters))
        pending = rejected
        if not pending:
            break
    must += [_must_charge(v, problem) for v in pending]
    return clusters, must


def split_clusters(vehicles: list[VehicleSnapshot], problem: BidProblem, budget: int) -> list[list[VehicleSnapshot]]:
    """Median-cut the vehicles into at most ``budget`` groups (at least one per node / below-floor key)."""
    if not vehicles:
        return []
    feats = _features(vehicles, problem)
    cap = np.array([v.capacity_wh for v in vehicles], dtype=float)
    keys = _departure_groups(vehicles, problem, max(1, budget // 2))
    heap: list[tuple[float, int, np.ndarray]] = []
    for n, (_, idx) in enumerate(sorted(keys.items())):
        members = np.array(idx)
        heapq.heappush(heap, (-_spread(feats[members], cap[members]), n, members))
    counter = len(heap)
    while len(heap) < budget:
        score, _, members = heapq.heappop(heap)
        if score >= 0 or len(members) < 2:
            heapq.heappush(heap, (score, counter, members))
            break
        for part in _cut(feats[members], members):
            counter += 1
            heapq.heappush(heap, (-_spread(feats[part], cap[part]), counter, part))
    return [[vehicles[i] for i in members] for _, _, members in sorted(heap, key=lambda e: e[1])]


def _departure_groups(
    vehicles: list[VehicleSnapshot], problem: BidProblem, at_most: int
) -> dict[tuple[str, bool, int], list[int]]:
    """Group by node, below-floor and departure block (an hour first, doubled until at most ``at_most`` groups, or
    the key alone): a cluster leaves with its earliest member, so mixing departures is the costliest spread."""
    avail = [_avail_steps(v, problem) for v in vehicles]
    block = max(1, round(3600 / problem.step_s))
    while True:
        keys: dict[tuple[str, bool, int], list[int]] = defaultdict(list)
        for i, v in enumerate(vehicles):
            dep = problem.steps if avail[i] >= problem.steps else avail[i] // block
            keys[(v.node, v.soc_wh < v.floor_wh, dep)].append(i)
        if len(keys) <= at_most or block >= problem.steps:
            return keys
        block *= 2


def _features(vehicles: list[VehicleSnapshot], problem: BidProblem) -> np.ndarray:
    """Per vehicle, the quantities whose spread within a cluster costs flexibility, scaled so a range of 1 costs
    about a cluster's whole flexibility (fractions of capacity; log c-rates; hours over the horizon)."""
    horizon_h = problem.steps * problem.step_h
    rows = []
    for v in vehicles:
        cap = float(v.capacity_wh)
        act_h = min(own_horizon_hours(v, problem), horizon_h + 1.0)
        need = own_need_fraction(v, problem)
        need_f = -1.0 if not math.isfinite(need) else need
        charge_h = max(0.0, need_f) * cap / max(v.max_charge_w * v.charge_efficiency, 1e-9)
        rows.append(
            (
                v.soc_wh / cap,
                v.floor_wh / cap,
                need_f,
                math.log(max(v.max_charge_w, 1.0) / cap),
                math.log(max(v.max_discharge_w, 1.0) / cap),
                v.charge_efficiency,
                v.discharge_efficiency,
                act_h / horizon_h,
                (act_h - charge_h) / horizon_h,
            )
        )
    return np.asarray(rows, dtype=float) * _WEIGHTS


def _spread(feats: np.ndarray, cap: FloatArray) -> float:
    """Capacity-weighted worst feature range: the flexibility the tightest-member rule gives up, roughly."""
    if len(feats) < 2:
        return 0.0
    return float(cap.sum() * np.max(feats.max(axis=0) - feats.min(axis=0)))


def _cut(feats: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split at the median of the most spread feature (at a value change, so both halves are non-empty)."""
    f = int(np.argmax(feats.max(axis=0) - feats.min(axis=0)))
    order = np.argsort(feats[:, f], kind="stable")
    values = feats[order, f]
    changes = np.flatnonzero(np.diff(values) > 0) + 1
    at = int(changes[np.argmin(np.abs(changes - len(values) / 2))])
    return members[order[:at]], members[order[at:]]


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


def _inflexible(v: VehicleSnapshot, problem: BidProblem) -> bool:
    """Its need takes flat-out charging until departure (or it is full and must stay so): nothing to offer."""
    if v.departure is None:
        return False
    need_wh = own_need_fraction(v, problem) * v.capacity_wh
    reach = v.max_charge_w * v.charge_efficiency * own_horizon_hours(v, problem)
    return need_wh > 0 and need_wh >= reach * (1 - 1e-9)


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
