"""Real-time regulation dispatch: signal -> fleet setpoint -> allocation -> one command per station -> fan-out.

Arithmetic (PJM sign convention: a positive signal asks for regulation *up*, i.e. inject more / consume less;
power here is + charging as everywhere in the VPP)::

    fleet setpoint (W) = basepoint - signal x awarded capacity - reserve deployment

Each vehicle's share (:func:`fleet.numerics.allocation.allocate`) becomes an OCPP SetChargingProfile TxProfile with
one period:

* OCPP 2.1 station: ``operationMode`` CentralSetpoint, ``setpoint`` = the vehicle's power (negative = discharge),
  ``limit`` / ``dischargeLimit`` = the allocation's safe bounds for the vehicle (so the charger's own frequency
  droop cannot push it past the floor the allocation kept);
* OCPP 2.0.1 station: a charging-rate limit (it can only modulate charging): its vehicle is given no discharge
  power in the allocation, and the profile's ``limit`` is the vehicle's power.

**The hot path does not touch the database.** A :class:`Dispatcher` (one per product and portfolio, per server
process) holds in memory the :class:`~fleet.numerics.arrays.FleetArrays` of the plugged-in vehicles, their station
routes (station id, EVSE, OCPP version, transaction) and the capacity awarded. A background task reloads them
every ``DISPATCH_REFRESH_S`` seconds and at once when a station connects or disconnects; committed telemetry (the
CSMS's ``telemetry`` group) updates state of charge in place between reloads. What was sent, the answers and the
latencies are recorded after the fan-out by a background writer thread.

**Where it runs.** Inside the Daphne process that receives the signal, started on the first signal. Reasons: the
embedded default (in-memory channel layer, one process) can only reach its stations from inside that process; the
signal then needs no hop before allocation; the stations this process holds get their commands with no hop at all
(:mod:`chargers.fanout`), and on Redis every other node gets ONE group message with the rest. With several Daphne
nodes any of them may receive signals: each keeps its own dispatcher (its state is a cache of the database, so
they agree) and the fan-out reaches every node either way. A dedicated dispatcher process would add a channel-layer
hop to every dispatch and could not work at all on the in-memory layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from chargers.fanout import Command, CommandResult, FanoutOutcome, calls_fanout
from chargers.telemetry import TELEMETRY_GROUP  # committed meter values, statuses, connections
from fleet.numerics.allocation import Allocation, allocate
from fleet.numerics.arrays import FleetArrays, PowerBounds, power_bounds

LOG = logging.getLogger(__name__)
PROFILE_ID = 7_700  # one TxProfile id per EVSE for regulation: each command replaces the previous one
STACK_LEVEL = 50
FLOWING_S = 10.0  # a dispatch ended this recently: signals are flowing (they come every 2 s)


# --------------------------------------------------------------------------------------------------------------
# Pure arithmetic
# --------------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Route:
    """Where a vehicle's commands go: its station, EVSE, negotiated OCPP version and open transaction."""

    station_id: str
    evse_id: int
    version: str
    transaction_id: str


def profile_payload(route: Route, power_w: int, lo_w: int, hi_w: int) -> dict[str, Any]:
    """SetChargingProfile request for one EVSE: a TxProfile with a single period (see the module docstring)."""
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
    return {"evseId": route.evse_id, "chargingProfile": profile}


def station_commands(routes: list[Route], allocation: Allocation, bounds: PowerBounds) -> list[Command]:
    """One SetChargingProfile per vehicle (row i of the fleet goes to ``routes[i]``)."""
    power = allocation.power_w.tolist()
    lo = bounds.lo.astype(np.int64).tolist()
    hi = bounds.hi.astype(np.int64).tolist()
    return [
        Command(route.station_id, "SetChargingProfile", profile_payload(route, p, low, high))
        for route, p, low, high in zip(routes, power, lo, hi, strict=True)
    ]


# --------------------------------------------------------------------------------------------------------------
# In-memory state
# --------------------------------------------------------------------------------------------------------------


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


class Dispatcher:
    """Follows one product's signal for one portfolio in this server process. Create with :func:`dispatcher_for`."""

    def __init__(
        self,
        *,
        product_id: int,
        portfolio: str,
        loader: StateLoader,
        recorder: Callable[[DispatchResult], None] | None,
        basepoint_recorder: Callable[[int, str, datetime, int], None] | None = None,
        refresh_s: float | None = None,
        hold_s: float | None = None,
        call_timeout_s: float | None = None,
        telemetry: bool = True,
    ) -> None:
        self.product_id = product_id
        self.portfolio = portfolio
        self.telemetry = telemetry  # follow the CSMS's committed telemetry (off in unit tests that feed it)
        self._loader = loader
        self._recorder = recorder
        self._basepoint_recorder = basepoint_recorder
        self.refresh_s = refresh_s if refresh_s is not None else settings.DISPATCH_REFRESH_S
        self.hold_s = hold_s if hold_s is not None else settings.DISPATCH_HOLD_S
        self.call_timeout_s = call_timeout_s if call_timeout_s is not None else settings.DISPATCH_CALL_TIMEOUT_S
        self.state: DispatchState | None = None
        self.basepoint_w: int | None = None
        self._soc = np.zeros(0)
        self._soc_dirty = False
        self._live_soc_pct: dict[str, float] = {}  # newest SoC reading per station, from committed telemetry
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatch-db")
        self._refresh_now = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._loaded = asyncio.Event()
        self._dispatch_ended = asyncio.Event()
        self._last_dispatch_end: float | None = None  # time.monotonic()
        self.last: DispatchResult | None = None
        self.last_signal_at: datetime | None = None  # newest signal instant handed to dispatch

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresh_loop(), name=f"dispatch-refresh-{self.product_id}")]
        if self.telemetry:
            self._tasks.append(loop.create_task(self._telemetry_loop(), name=f"dispatch-telemetry-{self.product_id}"))

    def refresh_soon(self) -> None:
        """Reload the state now rather than at the next period; callable from any thread (e.g. a request's)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._refresh_now.set)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._db.shutdown(wait=True)

    async def ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(self._loaded.wait(), timeout)

    # --- background refresh -------------------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("dispatch state refresh failed; keeping the previous state")
            self._refresh_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), self.refresh_s)
            await self._between_dispatches()

    async def _between_dispatches(self) -> None:
        """While signals flow, wait for the end of the next dispatch before reloading.

        A reload of a thousand vehicles costs the server process a few hundred milliseconds of CPU; started at a
        random moment it lands in the middle of a fan-out and stretches that dispatch's latency. Right after a
        dispatch there is most of a signal interval (2 s) to spare. The state is at most one interval staler.
        """
        if self._last_dispatch_end is None or time.monotonic() - self._last_dispatch_end > FLOWING_S:
            return
        self._dispatch_ended.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._dispatch_ended.wait(), FLOWING_S)

    async def refresh(self) -> None:
        """Reload the state from the database (on the dispatcher's own DB thread) and swap it in."""
        loop = asyncio.get_running_loop()
        now = time.time()
        state = await loop.run_in_executor(self._db, self._load, now)
        self._install(state, now)
        self._loaded.set()

    def _load(self, now: float) -> DispatchState:
        close_old_connections()
        try:
            return self._loader(product_id=self.product_id, portfolio=self.portfolio, now=now)
        finally:
            close_old_connections()

    def _install(self, state: DispatchState, now: float) -> None:
        soc = state.fleet.soc_wh.copy()
        # A reading the station reported is newer than any belief the database held when the state was read.
        for sid, row in state.row_of.items():
            pct = self._live_soc_pct.get(sid)
            if pct is not None:
                soc[row] = pct * state.fleet.capacity_wh[row] / 100.0
        self._soc = soc
        self.state = replace(state, fleet=state.fleet.with_soc(soc.copy()))
        self._soc_dirty = False
        self._update_basepoint(now)

    def _update_basepoint(self, now: float) -> None:
        state = self.state
        assert state is not None
        bounds = power_bounds(state.fleet, now=now, duration_s=self.hold_s)
        chosen = basepoint_choose(
            min_w=int(bounds.lo.sum()),
            max_w=int(bounds.hi.sum()),
            capacity_w=state.capacity_w,
            preferred_w=state.preferred_basepoint_w,
            current_w=self.basepoint_w,
        )
        if chosen != self.basepoint_w:
            self.basepoint_w = chosen
            if self._basepoint_recorder is not None and state.capacity_w > 0:
                at = datetime.fromtimestamp(now, UTC)
                self._db.submit(self._guarded, self._basepoint_recorder, self.product_id, self.portfolio, at, chosen)

    # --- telemetry (state of charge and connections between reloads) -------------------------------------------

    async def _telemetry_loop(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        channel = await layer.new_channel()  # default prefix (chargers.fanout._remote says why)
        await layer.group_add(TELEMETRY_GROUP, channel)
        try:
            while True:
                message = await layer.receive(channel)
                if message.get("type") == "telemetry.update":
                    self.telemetry_apply(message.get("updates", []))
        finally:
            await layer.group_discard(TELEMETRY_GROUP, channel)

    def telemetry_apply(self, updates: list[dict[str, Any]]) -> None:
        """SoC readings update the in-memory fleet; a station connecting or leaving triggers a reload."""
        state = self.state
        for update in updates:
            if update.get("kind") == "connection":
                self._refresh_now.set()
                continue
            if update.get("kind") != "meter":
                continue
            station_id = update.get("station_id", "")
            soc_pct = (update.get("values") or {}).get("SoC")
            if soc_pct is None:
                continue
            pct = min(max(float(soc_pct), 0.0), 100.0)
            self._live_soc_pct[station_id] = pct
            row = state.row_of.get(station_id) if state is not None else None
            if state is None or row is None:
                continue
            self._soc[row] = pct * state.fleet.capacity_wh[row] / 100.0
            self._soc_dirty = True

    # --- the hot path -------------------------------------------------------------------------------------------

    async def dispatch(self, signal: Signal) -> DispatchResult:
        """Allocate and send one signal value; returns once every station answered or the call deadline passed."""
        if self.state is None:
            await self.ready()  # only the very first signal of a process waits for the first load
        state = self.state
        assert state is not None
        now = time.time()
        if self._soc_dirty:
            state = self.state = replace(state, fleet=state.fleet.with_soc(self._soc.copy()))
            self._soc_dirty = False
        reserve = state.reserve_w if state.reserve_until is not None and now < state.reserve_until else 0
        capacity = state.capacity_w if state.award_until is not None and now < state.award_until else 0
        base = self.basepoint_w or 0
        setpoint = fleet_setpoint_w(
            basepoint_w=base, signal=float(signal.value), capacity_w=capacity, reserve_w=reserve
        )
        skipped = ""
        if capacity <= 0 and reserve <= 0:
            skipped = "no regulation capacity awarded for this product and portfolio now"
        elif len(state.fleet) == 0:
            skipped = "no plugged-in vehicle on a connected station"
        if skipped:
            result = DispatchResult(
                signal, capacity, base, reserve, setpoint, None, [], [], 0.0, now - state.loaded_at, 0, skipped
            )
            self._record(result)
            return result
        bounds = power_bounds(state.fleet, now=now, duration_s=self.hold_s)
        allocation = allocate(state.fleet, setpoint, now=now, duration_s=self.hold_s)
        commands = station_commands(state.routes, allocation, bounds)
        compute_ms = (time.time() - signal.received_at) * 1000.0
        outcome: FanoutOutcome = await calls_fanout(commands, timeout=self.call_timeout_s)
        result = DispatchResult(
            signal=signal,
            capacity_w=capacity,
            basepoint_w=base,
            reserve_w=reserve,
            setpoint_w=setpoint,
            allocation=allocation,
            routes=state.routes,
            results=outcome.results,
            compute_ms=compute_ms,
            state_age_s=now - state.loaded_at,
            nodes=outcome.nodes,
        )
        self._record(result)
        return result

    def _record(self, result: DispatchResult) -> None:
        self.last = result
        self._last_dispatch_end = time.monotonic()
        self._dispatch_ended.set()
        if self._recorder is not None:
            self._db.submit(self._guarded, self._recorder, result)

    @staticmethod
    def _guarded(fn: Callable[..., None], *args: Any) -> None:
        close_old_connections()
        try:
            fn(*args)
        except Exception:  # a failed record must not stop dispatching; the log says what was lost
            LOG.exception("recording a dispatch failed")
        finally:
            close_old_connections()


# --------------------------------------------------------------------------------------------------------------
# Per-process registry
# --------------------------------------------------------------------------------------------------------------

_dispatchers: dict[tuple[int, int, str], Dispatcher] = {}


def dispatcher_for(*, product_id: int, portfolio: str, factory: Callable[[], Dispatcher]) -> Dispatcher:
    """This event loop's dispatcher for a product and portfolio, created and started on first use."""
    key = (id(asyncio.get_running_loop()), product_id, portfolio)
    dispatcher = _dispatchers.get(key)
    if dispatcher is None:
        dispatcher = _dispatchers[key] = factory()
        dispatcher.start()
    return dispatcher


def dispatchers_running() -> list[Dispatcher]:
    return list(_dispatchers.values())


def dispatchers_refresh(*, portfolio: str) -> int:
    """Ask this process's dispatchers of ``portfolio`` to reload their state now; returns how many were asked.

    Other processes' dispatchers pick the change up with their next periodic reload (``DISPATCH_REFRESH_S``).
    """
    asked = [d for d in list(_dispatchers.values()) if d.portfolio == portfolio]
    for dispatcher in asked:
        dispatcher.refresh_soon()
    return len(asked)
