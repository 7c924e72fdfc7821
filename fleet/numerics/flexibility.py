"""What the fleet can offer the grid over a horizon: per-interval holdable up/down power, energy headroom, baseline.

Pure numpy (one (vehicles x intervals) array per quantity, no Python loop over vehicles), no Django. API::

    fleet_flexibility(vehicles: Sequence[VehicleSnapshot] | FleetArrays, *, start: datetime, intervals: int = 96,
                      interval_s: int = 900, hold_s: int | None = None,
                      per_vehicle: bool = False) -> FleetFlexibility
    vehicle_flexibility(vehicle: VehicleSnapshot, *, start: datetime, intervals: int = 96,
                        interval_s: int = 900, hold_s: int | None = None) -> FlexibilityEnvelope

Definitions, per vehicle and interval ``k`` starting at ``t_k = start + k * interval_s`` (the snapshot's state of
charge is taken as valid at ``start``):

* **baseline** (``baseline_w``): what the car does with no grid service, i.e. charge-on-arrival: full (derated)
  charge power from ``start`` until it reaches its target (or departs), then idle. Average grid W over the interval.
* **min_w / max_w**: the lowest / highest grid power (W, + charge) the car can *hold* for ``hold_s`` seconds from
  ``t_k``, starting from its baseline state, without crossing its mobility floor, without making its departure target
  unreachable at maximum charge power, and within its power limits (see :func:`fleet.numerics.arrays.raw_bounds`).
* **up_w** = ``max(baseline_w - min_w, 0)`` (discharge direction) and **down_w** = ``max(max_w - baseline_w, 0)``
  (charge direction): the regulation/reserve capacity the car offers relative to its baseline.
* **up_energy_wh** / **down_energy_wh**: grid-side energy headroom at ``t_k``: what discharging down to the floor
  would deliver, and what charging up to full capacity would absorb.

A car contributes to an interval only if it stays plugged in for the whole hold (``t_k + hold_s <= departure``);
otherwise its min/max equal its baseline there. Fleet figures are sums of integer per-vehicle figures (rounded
inwards, so the fleet never promises a watt one car cannot hold), in total and grouped by node (market location).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from fleet.numerics.arrays import FleetArrays, raw_bounds
from fleet.numerics.snapshot import VehicleSnapshot

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

__all__ = ["FleetFlexibility", "FlexibilityEnvelope", "VehicleFlexibility", "fleet_flexibility", "vehicle_flexibility"]

_FIELDS = ("baseline_w", "min_w", "max_w", "up_w", "down_w", "up_energy_wh", "down_energy_wh", "available")


@dataclass(frozen=True, slots=True, eq=False)
class FlexibilityEnvelope:
    """Per-interval figures (int64 arrays of length ``intervals``) for a vehicle, a node or the whole fleet.

    ``available[k]`` is the number of vehicles that can hold a service for ``hold_s`` from interval ``k``.
    """

    start: datetime
    interval_s: int
    hold_s: int
    baseline_w: IntArray
    min_w: IntArray
    max_w: IntArray
    up_w: IntArray
    down_w: IntArray
    up_energy_wh: IntArray
    down_energy_wh: IntArray
    available: IntArray

    @property
    def interval_starts(self) -> list[datetime]:
        return [self.start + timedelta(seconds=k * self.interval_s) for k in range(len(self.baseline_w))]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ISO interval starts and plain int lists."""
        out: dict[str, object] = {
            "start": self.start.isoformat(),
            "interval_s": self.interval_s,
            "hold_s": self.hold_s,
            "interval_starts": [t.isoformat() for t in self.interval_starts],
        }
        out.update({name: getattr(self, name).tolist() for name in _FIELDS})
        return out


@dataclass(frozen=True, slots=True, eq=False)
class VehicleFlexibility:
    """Per-vehicle figures: each a (vehicles x intervals) int64 array, row ``i`` for ``vehicle_id[i]``."""

    vehicle_id: IntArray
    baseline_w: IntArray
    min_w: IntArray
    max_w: IntArray
    up_w: IntArray
    down_w: IntArray
    up_energy_wh: IntArray
    down_energy_wh: IntArray
    available: IntArray


@dataclass(frozen=True, slots=True, eq=False)
class FleetFlexibility:
    """The fleet total, the same figures per node, and (when asked for) the per-vehicle arrays."""

    total: FlexibilityEnvelope
    by_node: dict[str, FlexibilityEnvelope]
    per_vehicle: VehicleFlexibility | None = None


def vehicle_flexibility(
    vehicle: VehicleSnapshot,
    *,
    start: datetime,
    intervals: int = 96,
    interval_s: int = 900,
    hold_s: int | None = None,
) -> FlexibilityEnvelope:
    """One vehicle's envelope (same definitions as :func:`fleet_flexibility`)."""
    return fleet_flexibility([vehicle], start=start, intervals=intervals, interval_s=interval_s, hold_s=hold_s).total


def fleet_flexibility(
    vehicles: Sequence[VehicleSnapshot] | FleetArrays,
    *,
    start: datetime,
    intervals: int = 96,
    interval_s: int = 900,
    hold_s: int | None = None,
    per_vehicle: bool = False,
) -> FleetFlexibility:
    """Envelope of every vehicle over ``intervals`` x ``interval_s`` from ``start`` (see the module docstring).

    ``hold_s`` is the product's delivery duration (default: one interval), e.g. 900 for a 15-min reserve product,
    1800 for FCR's 30-min energy margin, 3600 for hourly regulation.
    """
    if intervals <= 0 or interval_s <= 0:
        raise ValueError("intervals and interval_s must be > 0")
    hold = int(hold_s if hold_s is not None else interval_s)
    if hold <= 0:
        raise ValueError("hold_s must be > 0")
    fleet = vehicles if isinstance(vehicles, FleetArrays) else FleetArrays.from_snapshots(vehicles)
    figures = _vehicle_figures(fleet, start_ts=start.timestamp(), intervals=intervals, interval_s=interval_s, hold=hold)
    total = _envelope(start, interval_s, hold, {name: arr.sum(axis=0) for name, arr in figures.items()})
    by_node = {
        name: _envelope(start, interval_s, hold, sums) for name, sums in _node_sums(fleet, figures, intervals).items()
    }
    detail = VehicleFlexibility(vehicle_id=fleet.vehicle_id, **figures) if per_vehicle else None
    return FleetFlexibility(total=total, by_node=by_node, per_vehicle=detail)


def _vehicle_figures(
    fleet: FleetArrays, *, start_ts: float, intervals: int, interval_s: int, hold: int
) -> dict[str, IntArray]:
    col = lambda a: a[:, None]  # noqa: E731 - (n,) -> (n, 1) for broadcasting against intervals
    t = np.arange(intervals + 1, dtype=np.float64)[None, :] * interval_s  # interval edges, seconds from start
    until_departure = col(fleet.departure_ts - start_ts)
    present_until = np.maximum(until_departure, 0.0)  # a car past its departure is assumed gone
    eta_c, eta_d = col(fleet.charge_efficiency), col(fleet.discharge_efficiency)
    soc0, capacity, floor = col(fleet.soc_wh), col(fleet.capacity_wh), col(fleet.floor_wh)
    max_c, max_d, target = col(fleet.max_charge_w), col(fleet.max_discharge_w), col(fleet.target_wh)

    # Baseline: charge at full power from start until the target (or departure), then idle.
    charging_s = np.minimum(t, present_until)
    soc_edges = np.minimum(soc0 + max_c * eta_c * charging_s / 3600.0, np.maximum(soc0, target))
    soc_k = soc_edges[:, :-1]
    baseline = np.floor(np.diff(soc_edges, axis=1) / eta_c * 3600.0 / interval_s + 1e-9)

    t_k = t[:, :-1]
    lo, hi, short = raw_bounds(
        soc=soc_k,
        capacity=capacity,
        floor=floor,
        target=target,
        max_charge_w=max_c,
        max_discharge_w=max_d,
        eta_c=eta_c,
        eta_d=eta_d,
        until_departure_s=until_departure - t_k,
        duration_s=float(hold),
    )
    available = (t_k + hold <= present_until) & ~short
    # Holdable bounds; they may sit above (must charge) or below the baseline, which is an interval average.
    min_w = np.where(available, np.ceil(lo), baseline)
    max_w = np.where(available, np.maximum(np.floor(hi), np.ceil(lo)), baseline)
    present = t_k < present_until
    up_energy = np.where(present, np.floor(np.maximum(soc_k - floor, 0.0) * eta_d), 0.0)
    down_energy = np.where(present, np.floor((capacity - soc_k) / eta_c), 0.0)
    as_int = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return {
        "baseline_w": as_int(baseline),
        "min_w": as_int(min_w),
        "max_w": as_int(max_w),
        "up_w": as_int(np.maximum(baseline - min_w, 0.0)),
        "down_w": as_int(np.maximum(max_w - baseline, 0.0)),
        "up_energy_wh": as_int(up_energy),
        "down_energy_wh": as_int(down_energy),
        "available": as_int(available),
    }


def _node_sums(fleet: FleetArrays, figures: dict[str, IntArray], intervals: int) -> dict[str, dict[str, IntArray]]:
    if len(fleet) == 0:
        return {}
    order = np.argsort(fleet.node_code, kind="stable")
    codes = fleet.node_code[order]
    present_codes = np.unique(codes)
    starts = np.searchsorted(codes, present_codes)
    sums = {name: np.add.reduceat(arr[order], starts, axis=0) for name, arr in figures.items()}
    return {
        fleet.nodes[int(code)]: {name: sums[name][row] for name in figures} for row, code in enumerate(present_codes)
    }


def _envelope(start: datetime, interval_s: int, hold: int, sums: dict[str, IntArray]) -> FlexibilityEnvelope:
    return FlexibilityEnvelope(start=start, interval_s=interval_s, hold_s=hold, **sums)
