"""The pure part of regulation dispatch: the fleet setpoint, the basepoint, each station's SetChargingProfile, and
the values a dispatcher works with (its in-memory state, a signal, a dispatch's outcome).

Each vehicle's share becomes a SetChargingProfile TxProfile with one period:

* OCPP 2.1 station: ``operationMode`` CentralSetpoint, ``setpoint`` = the vehicle's power (negative = discharge),
  ``limit`` / ``dischargeLimit`` = the allocation's safe bounds for the vehicle (so the charger's own frequency
  droop cannot push it past the floor the allocation kept);
* OCPP 2.0.1 station: a charging-rate limit (it can only modulate charging): its vehicle is given no discharge
  power in the allocation, and the profile's ``limit`` is the vehicle's power.

(:mod:`vpp.dispatch.dispatcher` explains the arithmetic, and re-exports these names.)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from chargers.fanout import Command, CommandResult
from fleet.numerics.allocation import Allocation, allocate
from fleet.numerics.arrays import FleetArrays, PowerBounds, power_bounds

PROFILE_ID = 7_700  # one TxProfile id per EVSE for regulation: each command replaces the previous one
STACK_LEVEL = 50


def fleet_setpoint_w(*, basepoint_w: int, signal: float, capacity_w: int, reserve_w: int = 0) -> int:
    """Fleet power to ask for (W, + charging): basepoint - signal x capacity - reserve deployed (W of discharge).

    ``signal`` is the operator's normalised value, clipped to [-1, 1] (PJM: + = regulation up).
    """
    clipped = min(max(float(signal), -1.0), 1.0)
    return round(basepoint_w - clipped * capacity_w - reserve_w)


def basepoint_choose(*, min_w: int, max_w: int, capacity_w: int, preferred_w: int, current_w: int | None) -> int:
    """The fleet basepoint: room for +/- capacity on both sides, as close to ``preferred_w`` as that allows.

    The current basepoint is kept while it still leaves that room (a stable basepoint is what the operator
    scores around); if the fleet cannot hold +/- capacity at all, the middle of its range is the best there is.
    """
    low, high = min_w + capacity_w, max_w - capacity_w
    if low > high:
        return (min_w + max_w) // 2
    if current_w is not None and low <= current_w <= high:
        return current_w
    return min(max(preferred_w, low), high)


def reserve_room(fleet: FleetArrays, *, held_w: int, sustain_h: float, now: float) -> tuple[FleetArrays, np.ndarray]:
    """The fleet as regulation may use it at ``now`` (epoch s) while ``held_w`` of awarded reserve waits for a
    deployment.

    Each car that can discharge takes a share of the reserve in proportion to what it could deliver for the
    product's sustain time ``sustain_h`` (its derated discharge power, or less if its energy above what it keeps
    runs out sooner), so every share is deliverable. A car keeps its floor, or its departure need if that is higher
    (its target less what it can still charge after a full deployment), and a car that leaves before a deployment
    starting now would end holds no share: it could not sustain one. A car's share (W, grid side) is then kept out
    of regulation twice:

    * its floor rises to what it keeps plus the pack energy a full deployment draws, ``share x sustain_h / eta_d``
      (Wh), so regulation never spends the energy the deployment needs;
    * its discharge limit drops by the share, so whatever regulation asks of it, the car can still discharge its
      share more when an event comes mid-regulation.

    Returns the adjusted fleet (a view sharing the other arrays) and each car's share (W, float).
    """
    share = np.zeros(len(fleet))
    if held_w <= 0 or sustain_h <= 0 or len(fleet) == 0:
        return fleet, share
    sustain_s = sustain_h * 3600.0
    until_s = fleet.departure_ts - now
    charge_after_h = np.maximum(until_s - sustain_s, 0.0) / 3600.0
    with np.errstate(invalid="ignore"):  # no departure: inf hours of charging (0 W x inf = nan), no need
        need = np.where(
            np.isfinite(until_s) & (fleet.target_wh > 0),
            fleet.target_wh - fleet.max_charge_w * fleet.charge_efficiency * charge_after_h,
            -np.inf,
        )
    keep = np.maximum(fleet.floor_wh, need)
    above = np.maximum(fleet.soc_wh - keep, 0.0)
    can = np.minimum(fleet.max_discharge_w, above * fleet.discharge_efficiency / sustain_h)
    can[until_s < sustain_s] = 0.0  # gone before a deployment starting now would end
    total = float(can.sum())
    if total <= 0:
        return fleet, share
    share = can * min(held_w / total, 1.0)  # more reserve than the fleet can deliver: each car holds all it can
    raised = np.minimum(keep + share * sustain_h / fleet.discharge_efficiency, fleet.capacity_wh)
    floor = np.where(share > 0, np.maximum(fleet.floor_wh, raised), fleet.floor_wh)
    discharge = np.maximum(fleet.max_discharge_w - share, 0.0)
    return replace(fleet, floor_wh=floor, max_discharge_w=discharge), share


@dataclass(frozen=True, slots=True)
class Cap:
    """A cap on the portfolio's net power from ``start_s`` to ``end_s`` (epoch s), as dispatch reads a stored
    :class:`vpp.models.PowerCap`: net export at most ``export_w`` (>= 0), net import at most ``import_w`` (W)."""

    start_s: float
    end_s: float
    export_w: int | None = None
    import_w: int | None = None


def caps_at(caps: tuple[Cap, ...], now: float) -> tuple[int | None, int | None]:
    """The tightest export and import caps in force at ``now`` (None: no such cap)."""
    exports = [c.export_w for c in caps if c.export_w is not None and c.start_s <= now < c.end_s]
    imports = [c.import_w for c in caps if c.import_w is not None and c.start_s <= now < c.end_s]
    return (min(exports) if exports else None), (min(imports) if imports else None)


def departure_need_wins(lo: np.ndarray, import_w: int) -> str:
    """ ": departure need N W wins" where the cars that must charge to leave on time (``lo`` > 0: N W in all) keep
    the fleet's least power (the sum of ``lo``) above the import cap; "" otherwise (a fleet that merely cannot
    discharge as much as a negative cap asks is not a departure need)."""
    need, least = int(np.maximum(lo, 0).sum()), int(lo.sum())
    return f": departure need {need} W wins" if need > 0 and least > import_w else ""


@dataclass(frozen=True)
class Capped:
    """An allocation within the caps in force: the bounds each station is sent, the setpoint asked, and what the
    caps did ("" when none is in force)."""

    allocation: Allocation
    bounds: PowerBounds
    setpoint_w: int
    note: str = ""


@dataclass(frozen=True)
class CapsInForce:
    """The caps in force at one dispatch (:func:`caps_apply`): the fleet with its discharge lowered to the export cap
    and the setpoint within both caps."""

    fleet: FleetArrays
    setpoint_w: int
    export_w: int | None = None
    import_w: int | None = None

    def clamp(self, power_w: int) -> int:
        """``power_w`` within the caps: at most the import cap, then at least -export cap (the export cap wins over a
        negative import cap, which asks for export)."""
        if self.import_w is not None:
            power_w = min(power_w, self.import_w)
        if self.export_w is not None:
            power_w = max(power_w, -self.export_w)
        return power_w

    def station_bounds(self, bounds: PowerBounds, allocation: Allocation) -> PowerBounds:
        """Under an import cap no station may charge past its allocated power (its upper bound, a 2.1 station's
        ``limit``, is that power); the lower bounds stay (departure needs)."""
        if self.import_w is None:
            return bounds
        return PowerBounds(lo=bounds.lo, hi=np.maximum(allocation.power_w, bounds.lo), short=bounds.short)

    def note(self, lo: np.ndarray) -> str:
        notes = [f"export cap {self.export_w} W"] if self.export_w is not None else []
        if self.import_w is not None:
            notes.append(f"import cap {self.import_w} W" + departure_need_wins(lo, self.import_w))
        return "; ".join(notes)


def caps_apply(fleet: FleetArrays, setpoint_w: int, caps: tuple[Cap, ...], *, now: float) -> CapsInForce:
    """The caps in force at ``now`` applied to the fleet and the setpoint (:func:`capped_allocate` says how)."""
    export_w, import_w = caps_at(caps, now)
    if export_w is not None:
        total = float(fleet.max_discharge_w.sum())
        if total > export_w:
            fleet = replace(fleet, max_discharge_w=np.floor(fleet.max_discharge_w * (export_w / total)))
    limits = CapsInForce(fleet, setpoint_w, export_w, import_w)
    return replace(limits, setpoint_w=limits.clamp(setpoint_w))


def capped_allocate(
    fleet: FleetArrays, setpoint_w: int, caps: tuple[Cap, ...], *, now: float, duration_s: float
) -> Capped:
    """:func:`fleet.numerics.allocation.allocate` of ``setpoint_w`` within the caps in force at ``now``.

    * **Export cap** E: each car's discharge power is lowered pro rata so that together they discharge at most E
      (``max_discharge_w x E / sum``, rounded down), and the setpoint is at least -E. Only discharge is lowered:
      floors, departure needs and charging are untouched, so the cap never adds discharge nor strands a driver.
    * **Import cap** I: the setpoint is at most I (but never below -E: the export cap wins over a negative import
      cap, which asks for export), and each station's upper bound (a 2.1 station's ``limit``, the room its own
      droop may use) is its allocated power, no more. Where the cars' departure needs (the sum of their lower
      bounds) ask for more than I, the allocation cannot go below them: **the departure need wins**, and the note
      says so.
    """
    limits = caps_apply(fleet, setpoint_w, caps, now=now)
    bounds = power_bounds(limits.fleet, now=now, duration_s=duration_s)
    allocation = allocate(limits.fleet, limits.setpoint_w, now=now, duration_s=duration_s)
    return Capped(allocation, limits.station_bounds(bounds, allocation), limits.setpoint_w, limits.note(bounds.lo))


@dataclass(frozen=True, slots=True)
class Route:
    """Where a vehicle's commands go: its station, EVSE, negotiated OCPP version and open transaction."""

    station_id: str
    evse_id: int
    version: str
    transaction_id: str


def profile_payload(
    route: Route, power_w: int, lo_w: int, hi_w: int, *, valid_to: datetime | None = None
) -> dict[str, Any]:
    """SetChargingProfile request for one EVSE: a TxProfile with a single period (see the module docstring).

    ``valid_to`` ends the setpoint by itself: if no newer dispatch replaces it (the signal stopped, the award ended,
    the aggregator lost its database or died), the station drops it rather than discharge on at the last value.
    """
    if route.version == "2.1":
        period: dict[str, Any] = {
            "startPeriod": 0,
            "operationMode": "CentralSetpoint",
            "setpoint": float(power_w),
            "limit": float(max(hi_w, 0)),
            "dischargeLimit": float(min(lo_w, 0)),
        }
    else:  # 2.0.1: a charging-rate limit only
        period = {"startPeriod": 0, "limit": float(max(power_w, 0))}
    profile: dict[str, Any] = {
        "id": PROFILE_ID,
        "stackLevel": STACK_LEVEL,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "W", "chargingSchedulePeriod": [period]}],
    }
    if route.transaction_id:
        profile["transactionId"] = route.transaction_id
    if valid_to is not None:
        profile["validTo"] = valid_to.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {"evseId": route.evse_id, "chargingProfile": profile}


def station_commands(
    routes: list[Route], allocation: Allocation, bounds: PowerBounds, *, valid_until_s: float | None = None
) -> list[Command]:
    """One SetChargingProfile per vehicle (row i of the fleet goes to ``routes[i]``), each valid until the epoch
    second ``valid_until_s`` (the dispatcher's hold, which the allocation was sized for)."""
    valid_to = datetime.fromtimestamp(valid_until_s, UTC) if valid_until_s is not None else None
    power = allocation.power_w.tolist()
    lo = bounds.lo.astype(np.int64).tolist()
    hi = bounds.hi.astype(np.int64).tolist()
    return [
        Command(route.station_id, "SetChargingProfile", profile_payload(route, p, low, high, valid_to=valid_to))
        for route, p, low, high in zip(routes, power, lo, hi, strict=True)
    ]


@dataclass
class DispatchState:
    """Everything a dispatch needs, loaded from the database in the background (see ``vpp.dispatch.selectors``)."""

    fleet: FleetArrays
    routes: list[Route]
    capacity_w: int
    award_until: float | None  # epoch s the awards in force end; None = no award
    loaded_at: float
    preferred_basepoint_w: int = 0
    reserve_w: int = 0  # reserve deployments called on the portfolio (W of extra discharge) ...
    reserve_until: float | None = None  # ... until this epoch s (the first of them to end)
    reserve_held_w: int = 0  # awarded reserve kept out of regulation (floors raised, discharge headroom kept)
    caps: tuple[Cap, ...] = ()  # export / import caps of the portfolio, in force now or later
    row_of: dict[str, int] = field(default_factory=dict)  # station id -> fleet row

    def __post_init__(self) -> None:
        self.row_of = {route.station_id: i for i, route in enumerate(self.routes)}


StateLoader = Callable[..., DispatchState]


@dataclass(frozen=True, slots=True)
class Signal:
    product_id: int
    portfolio: str
    value: Decimal
    at: datetime
    source: str
    received_at: float  # epoch s, when the intake got it


@dataclass(frozen=True)
class DispatchResult:
    """The outcome of one dispatch (what gets recorded)."""

    signal: Signal
    capacity_w: int
    basepoint_w: int
    reserve_w: int
    setpoint_w: int
    allocation: Allocation | None
    routes: list[Route]
    results: list[CommandResult]
    compute_ms: float
    state_age_s: float
    nodes: int
    skipped: str = ""  # why nothing was sent (no award, no vehicles)
    capped: str = ""  # what the caps in force did (Capped.note)

    def latencies_ms(self) -> list[float]:
        t0 = self.signal.received_at
        return [(r.answered_at - t0) * 1000.0 for r in self.results if r.answered_at is not None]

    @property
    def last_ms(self) -> float | None:
        values = self.latencies_ms()
        return max(values) if values else None

    @property
    def p50_ms(self) -> float | None:
        values = self.latencies_ms()
        return statistics.median(values) if values else None

    @property
    def accepted(self) -> int:
        return sum(1 for r in self.results if r.status == "result" and r.answer == "Accepted")


def in_force(state: DispatchState, now: float) -> tuple[int, int]:
    """(reserve W, regulation capacity W) of ``state`` in force at ``now``."""
    reserve = state.reserve_w if state.reserve_until is not None and now < state.reserve_until else 0
    capacity = state.capacity_w if state.award_until is not None and now < state.award_until else 0
    return reserve, capacity


def nothing_to_send(state: DispatchState | None, now: float) -> str:
    """Why a dispatch at ``now`` would send no setpoint with ``state`` ("" when it would send, or while no state is
    loaded yet): what the intake tells the sender instead of "dispatched"."""
    if state is None:
        return ""
    reserve, capacity = in_force(state, now)
    if capacity <= 0 and reserve <= 0:
        return "no regulation capacity awarded for this product and portfolio now"
    if len(state.fleet) == 0:
        return "no plugged-in vehicle on a connected station: nothing to send setpoints to"
    return ""
