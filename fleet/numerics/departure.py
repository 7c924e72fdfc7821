"""Will the car be ready for its trip? The state of charge projected at departure, and how much a discharge now
may take before the mobility floor. Pure: no Django, no clock (``now`` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleet.numerics.snapshot import VehicleSnapshot


@dataclass(frozen=True, slots=True)
class DepartureOutlook:
    """``projected_wh``: what the pack holds at departure if the car charges at its full rate from now on (the best
    it can do); ``at_risk`` when that still falls short of the target. ``None`` departure: nothing to project."""

    projected_wh: int
    projected_pct: float
    target_pct: float
    hours_left: float | None
    at_risk: bool
    shortfall_wh: int


def departure_outlook(snapshot: VehicleSnapshot, *, now: datetime, plugged_in: bool = True) -> DepartureOutlook:
    """The best SoC reachable by departure (charging flat out, within capacity) against the target.

    An unplugged car cannot charge: its projection is its SoC now. A car whose departure has passed is projected at
    its SoC now (it is overdue: at risk if below target).
    """
    capacity = max(snapshot.capacity_wh, 1)
    target_pct = round(100 * snapshot.target_wh / capacity, 1)
    if snapshot.departure is None:
        pct = round(100 * snapshot.soc_wh / capacity, 1)
        return DepartureOutlook(snapshot.soc_wh, pct, target_pct, None, False, 0)
    hours = max((snapshot.departure - now).total_seconds() / 3600.0, 0.0)
    gain = snapshot.max_charge_w * snapshot.charge_efficiency * hours if plugged_in else 0.0
    projected = int(min(snapshot.soc_wh + gain, capacity))
    shortfall = max(snapshot.target_wh - projected, 0)
    return DepartureOutlook(
        projected_wh=projected,
        projected_pct=round(100 * projected / capacity, 1),
        target_pct=target_pct,
        hours_left=round(hours, 2),
        at_risk=shortfall > 0,
        shortfall_wh=shortfall,
    )


def discharge_room_wh(snapshot: VehicleSnapshot) -> int:
    """Energy the pack may give before the mobility floor (Wh stored, >= 0)."""
    return max(snapshot.soc_wh - snapshot.floor_wh, 0)


def discharge_refusal(snapshot: VehicleSnapshot, *, power_w: int, minutes: float) -> str | None:
    """Why discharging ``power_w`` (grid side, W) for ``minutes`` would be refused, or None when it stays above the
    floor. The pack loses grid energy / discharge efficiency."""
    if power_w <= 0 or minutes <= 0:
        return "power and duration must be positive"
    if snapshot.max_discharge_w <= 0:
        return "this car cannot discharge at this charger (no V2G power available)"
    if power_w > snapshot.max_discharge_w:
        return (
            f"{power_w / 1000:.1f} kW is above this car's discharge limit of {snapshot.max_discharge_w / 1000:.1f} kW"
        )
    room = discharge_room_wh(snapshot)
    taken = power_w * minutes / 60.0 / max(snapshot.discharge_efficiency, 1e-6)
    if taken > room:
        capacity = max(snapshot.capacity_wh, 1)
        floor_pct = 100 * snapshot.floor_wh / capacity
        soc_pct = 100 * snapshot.soc_wh / capacity
        most = int(room * max(snapshot.discharge_efficiency, 1e-6) * 60 / power_w) if power_w else 0
        return (
            f"would cross the mobility floor: the car is at {soc_pct:.0f} % with its floor at {floor_pct:.0f} %, so "
            f"{room / 1000:.1f} kWh may be discharged; {power_w / 1000:.1f} kW for {minutes:g} min takes "
            f"{taken / 1000:.1f} kWh (at most {most} min at this power)"
        )
    return None
