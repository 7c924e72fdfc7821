"""Struct-of-arrays view of a fleet and the per-vehicle power bounds every VPP computation starts from.

Pure numpy, no Django. Build :class:`FleetArrays` once from :class:`~fleet.numerics.snapshot.VehicleSnapshot`
objects and reuse it on the dispatch hot path (``with_soc`` / ``advance`` give a new view with updated state of
charge, sharing the rest).

Energy model (used everywhere in the VPP core):

* charging at grid power ``p > 0`` for ``h`` seconds adds ``p * eta_c * h / 3600`` Wh to the pack;
* discharging at grid power ``p < 0`` removes ``|p| * h / (3600 * eta_d)`` Wh from the pack.

The **mobility floor** is never crossed by discharging: a vehicle at or above its floor ends every interval at or above
it; a vehicle already below it (arrived low) is never discharged. The **departure need** at time ``t`` is
``target - P_c * eta_c * (departure - t) / 3600``: the least energy from which the target is still reachable by
charging at the (thermally derated) maximum charge power until departure. Every bound keeps the vehicle at or above
its need at the end of the interval, so the driver's target stays reachable whatever the grid asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import numpy.typing as npt

from fleet.numerics.snapshot import VehicleSnapshot
from fleet.numerics.thermal import charge_derate, discharge_derate

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class FleetArrays:
    """One numpy array per :class:`VehicleSnapshot` field, row ``i`` = vehicle ``vehicle_id[i]``.

    ``departure_ts`` is POSIX seconds (``inf`` for no planned departure). ``node_code[i]`` indexes ``nodes``.
    ``max_charge_w`` / ``max_discharge_w`` are already thermally derated (floored to whole watts).
    """

    vehicle_id: IntArray
    capacity_wh: FloatArray
    soc_wh: FloatArray
    floor_wh: FloatArray
    target_wh: FloatArray
    max_charge_w: FloatArray
    max_discharge_w: FloatArray
    rated_charge_w: FloatArray
    rated_discharge_w: FloatArray
    charge_efficiency: FloatArray
    discharge_efficiency: FloatArray
    departure_ts: FloatArray
    state_of_health: FloatArray
    temperature_c: FloatArray
    cycles_today: FloatArray
    degradation_cost_per_kwh: FloatArray
    node_code: IntArray
    nodes: tuple[str, ...]
    station_id: tuple[str | None, ...]
    evse_id: tuple[int | None, ...]

    def __len__(self) -> int:
        return int(self.vehicle_id.shape[0])

    @classmethod
    def from_snapshots(cls, vehicles: Sequence[VehicleSnapshot]) -> FleetArrays:
        """Build the arrays (O(n)); validates the physical sanity of each snapshot."""
        for v in vehicles:
            _validate(v)
        node_names = sorted({v.node for v in vehicles})
        node_index = {name: i for i, name in enumerate(node_names)}

        def col(attr: str) -> FloatArray:
            return np.fromiter((getattr(v, attr) for v in vehicles), dtype=np.float64, count=len(vehicles))

        temp = col("temperature_c")
        rated_c, rated_d = col("max_charge_w"), col("max_discharge_w")
        return cls(
            vehicle_id=np.fromiter((v.vehicle_id for v in vehicles), dtype=np.int64, count=len(vehicles)),
            capacity_wh=col("capacity_wh"),
            soc_wh=col("soc_wh"),
            floor_wh=col("floor_wh"),
            target_wh=np.minimum(col("target_wh"), col("capacity_wh")),
            max_charge_w=np.floor(rated_c * charge_derate(temp)),
            max_discharge_w=np.floor(rated_d * discharge_derate(temp)),
            rated_charge_w=rated_c,
            rated_discharge_w=rated_d,
            charge_efficiency=col("charge_efficiency"),
            discharge_efficiency=col("discharge_efficiency"),
            departure_ts=np.fromiter(
                (v.departure.timestamp() if v.departure is not None else math.inf for v in vehicles),
                dtype=np.float64,
                count=len(vehicles),
            ),
            state_of_health=col("state_of_health"),
            temperature_c=temp,
            cycles_today=col("cycles_today"),
            degradation_cost_per_kwh=col("degradation_cost_per_kwh"),
            node_code=np.fromiter((node_index[v.node] for v in vehicles), dtype=np.int64, count=len(vehicles)),
            nodes=tuple(node_names),
            station_id=tuple(v.station_id for v in vehicles),
            evse_id=tuple(v.evse_id for v in vehicles),
        )

    def with_soc(self, soc_wh: npt.ArrayLike) -> FleetArrays:
        """The same fleet with a new state of charge per vehicle (Wh); O(1) besides the copy of one array."""
        soc = np.asarray(soc_wh, dtype=np.float64)
        if soc.shape != self.soc_wh.shape:
            raise ValueError(f"soc_wh has shape {soc.shape}, fleet has {self.soc_wh.shape}")
        return replace(self, soc_wh=soc)

    def advance(self, power_w: npt.ArrayLike, duration_s: float) -> FleetArrays:
        """State of charge after holding ``power_w`` (grid side, W, + charge) for ``duration_s`` seconds."""
        return self.with_soc(self.soc_wh + pack_energy_wh(self, np.asarray(power_w, dtype=np.float64), duration_s))


def pack_energy_wh(fleet: FleetArrays, power_w: FloatArray, duration_s: float | FloatArray) -> FloatArray:
    """Change of stored energy (Wh) for grid-side power ``power_w`` held ``duration_s`` seconds (efficiency model)."""
    hours = np.asarray(duration_s, dtype=np.float64) / 3600.0
    return np.where(
        power_w >= 0, power_w * fleet.charge_efficiency * hours, power_w / fleet.discharge_efficiency * hours
    )


def _validate(v: VehicleSnapshot) -> None:
    problems = []
    if v.capacity_wh <= 0:
        problems.append("capacity_wh must be > 0")
    if not 0 <= v.soc_wh <= v.capacity_wh:
        problems.append("soc_wh must be within 0..capacity_wh")
    if not 0 <= v.floor_wh <= v.capacity_wh:
        problems.append("floor_wh must be within 0..capacity_wh")
    if v.max_charge_w < 0 or v.max_discharge_w < 0:
        problems.append("power limits are magnitudes >= 0")
    if not (0 < v.charge_efficiency <= 1 and 0 < v.discharge_efficiency <= 1):
        problems.append("efficiencies must be within (0, 1]")
    if v.target_wh < 0:
        problems.append("target_wh must be >= 0")
    if problems:
        raise ValueError(f"vehicle {v.vehicle_id}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True, eq=False)
class PowerBounds:
    """Per-vehicle feasible grid power for one interval: ``lo <= p <= hi`` (W, integers as float64).

    ``lo > 0`` means the vehicle *must* charge at least that much to keep its departure target reachable.
    ``short[i]`` is True when even ``hi`` cannot keep the target reachable (the car arrived with too little time):
    its bounds collapse to ``hi`` (charge as fast as possible) and it is reported, never discharged.
    """

    lo: FloatArray
    hi: FloatArray
    short: npt.NDArray[np.bool_]


def raw_bounds(
    *,
    soc: FloatArray,
    capacity: FloatArray,
    floor: FloatArray,
    target: FloatArray,
    max_charge_w: FloatArray,
    max_discharge_w: FloatArray,
    eta_c: FloatArray,
    eta_d: FloatArray,
    until_departure_s: FloatArray,
    duration_s: float,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Float bounds (lo, hi, short) for holding a power ``duration_s`` seconds; all arrays broadcast together.

    A vehicle leaving inside the interval is only counted until it leaves (its energy limits use the time left).
    A vehicle past its departure but still plugged in must reach its target within this interval.
    """
    leaving = (until_departure_s > 0) & (until_departure_s < duration_s)
    hold_s = np.where(leaving, np.maximum(until_departure_s, 1.0), duration_s)
    hold_h = hold_s / 3600.0
    after_s = np.maximum(until_departure_s - hold_s, 0.0)  # time left to charge after this interval
    with np.errstate(invalid="ignore"):  # no departure: after_s is inf (0 W * inf = nan), the need is -inf
        need = np.where(
            np.isfinite(until_departure_s) & (target > 0),
            target - max_charge_w * eta_c * after_s / 3600.0,
            -np.inf,
        )
    hi = np.maximum(np.minimum(max_charge_w, (capacity - soc) / (eta_c * hold_h)), 0.0)
    # Floor: never discharge below it; a car already below is never discharged (but not forced to charge).
    lo_floor = np.where(soc >= floor, -(soc - floor) * eta_d / hold_h, 0.0)
    # Departure need: above it, discharge at most the surplus; below it, charge at least the deficit.
    deficit = need - soc
    lo_need = np.where(deficit > 0, deficit / (eta_c * hold_h), deficit * eta_d / hold_h)
    lo = np.maximum(np.maximum(-max_discharge_w, lo_floor), lo_need)
    short = lo > hi
    return lo, hi, short


def power_bounds(fleet: FleetArrays, *, now: datetime | float, duration_s: float) -> PowerBounds:
    """Integer per-vehicle bounds for one dispatch interval of ``duration_s`` seconds starting at ``now``.

    Rounded inwards (``ceil(lo)``, ``floor(hi)``) so any integer allocation inside them is safe. When an energy
    bound leaves less than one watt of room the departure need wins over the capacity limit (the BMS stops a full
    pack anyway; a stranded driver is the failure that matters).
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    now_ts = now.timestamp() if isinstance(now, datetime) else float(now)
    lo, hi, short = raw_bounds(
        soc=fleet.soc_wh,
        capacity=fleet.capacity_wh,
        floor=fleet.floor_wh,
        target=fleet.target_wh,
        max_charge_w=fleet.max_charge_w,
        max_discharge_w=fleet.max_discharge_w,
        eta_c=fleet.charge_efficiency,
        eta_d=fleet.discharge_efficiency,
        until_departure_s=fleet.departure_ts - now_ts,
        duration_s=duration_s,
    )
    hi_i = np.floor(hi)
    lo_i = np.minimum(np.ceil(lo), fleet.max_charge_w)
    lo_i = np.where(short, hi_i, lo_i)
    hi_i = np.maximum(hi_i, lo_i)
    return PowerBounds(lo=lo_i, hi=hi_i, short=short)
