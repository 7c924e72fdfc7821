"""Real-time regulation dispatch: signal -> fleet setpoint -> allocation -> one command per station -> fan-out.

Arithmetic (PJM sign convention: a positive signal asks for regulation *up*, i.e. inject more / consume less;
power here is + charging as everywhere in the VPP)::

    fleet setpoint (W) = basepoint - signal x awarded capacity - reserve deployment

Each vehicle's share (:func:`fleet.numerics.allocation.allocate`) becomes an OCPP SetChargingProfile TxProfile
(:mod:`vpp.dispatch.values` says what a 2.1 and a 2.0.1 station get). **Closed loop** (``DISPATCH_CLOSED_LOOP``):
the allocation splits the setpoint by each vehicle's measured response gain, plus a bounded fleet correction
(:mod:`vpp.dispatch.tracking`, learnt from the same telemetry feed as state of charge).

Why one module: the dispatcher's lifecycle, its telemetry feed and its hot path share one in-memory state on one
event loop; the pure parts are already apart (``values``, ``tracking``, ``fleet.numerics``).

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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from chargers.fanout import FanoutOutcome, calls_fanout
from chargers.telemetry import TELEMETRY_GROUP  # committed meter values, statuses, connections
from fleet.numerics.allocation import allocate
from fleet.numerics.arrays import power_bounds
from vpp.dispatch.tracking import Reading, ResponseTracker, power_reading
from vpp.dispatch.values import (  # noqa: F401 - re-exported: the dispatcher's arithmetic, payloads and values
    PROFILE_ID,
    STACK_LEVEL,
    DispatchResult,
    DispatchState,
    Route,
    Signal,
    StateLoader,
    basepoint_choose,
    caps_apply,
    fleet_setpoint_w,
    in_force,
    nothing_to_send,
    profile_payload,
    station_commands,
)

LOG = logging.getLogger(__name__)
FLOWING_S = 10.0  # a dispatch ended this recently: signals are flowing (they come every 2 s)
STOP_WAIT_S = 3.0
FEED_RETRY_S = 1.0  # the telemetry feed's retry period while the channel layer fails


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
        idle_s: float | None = None,
        rejoin_s: float | None = None,
        closed_loop: bool | None = None,
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
        self.idle_s = idle_s if idle_s is not None else settings.DISPATCH_IDLE_S
        self.rejoin_s = rejoin_s if rejoin_s is not None else settings.DISPATCH_TELEMETRY_REJOIN_S
        self.used_at = time.monotonic()  # the last signal handed to it (or its creation): idle ones stop
        self._feed_lost_at: float | None = None  # time.monotonic() the telemetry feed failed; None while it works
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
        self.last_dispatch_end: float | None = None  # time.monotonic()
        self.last: DispatchResult | None = None
        self.last_signal_at: datetime | None = None  # newest signal instant handed to dispatch
        closed_loop = settings.DISPATCH_CLOSED_LOOP if closed_loop is None else closed_loop
        self.tracker = ResponseTracker() if closed_loop else None  # response gains and the fleet correction

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
        """Cancel the loops; a channels-redis ``receive`` can swallow a cancellation, so wait a bounded time."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in stuck:
                LOG.warning("dispatch %s/%s: %s did not stop; left cancelled", self.product_id, self.portfolio, task)
        self._db.shutdown(wait=True)

    @property
    def stopped(self) -> bool:
        return bool(self._tasks) and all(task.done() for task in self._tasks)

    def take(self, signal: Signal, *, now: float | None = None) -> str:
        """Whether to dispatch ``signal``: "" when it is taken (it becomes the newest), else why not.

        Newest wins: a retransmission or a late value is not dispatched, the stations already follow a newer one.
        A value stamped in the future never becomes "the newest": it would make every real value after it look
        late and freeze dispatch until a restart. The intake refuses such values (``vpp.dispatch.services``); this
        is the dispatcher's own guard for any other path, and it also forgets a newest instant that is now in the
        future (the server's clock stepped back).
        """
        now = time.time() if now is None else now
        skew = settings.REGULATION_SIGNAL_MAX_SKEW_S
        at = signal.at.timestamp()
        self.used_at = time.monotonic()
        if at > now + skew:
            LOG.warning(
                "dispatch %s/%s: ignoring a signal stamped %s, %.1f s ahead of this server's clock (window %.1f s)",
                self.product_id, self.portfolio, signal.at.isoformat(), at - now, skew,
            )  # fmt: skip
            return f"stamped {at - now:.1f} s in the future (more than {skew:g} s ahead of this server's clock)"
        if self.last_signal_at is not None and self.last_signal_at.timestamp() > now + skew:
            LOG.warning(
                "dispatch %s/%s: the newest signal instant %s is ahead of this server's clock; forgetting it",
                self.product_id, self.portfolio, self.last_signal_at.isoformat(),
            )  # fmt: skip
            self.last_signal_at = None
        if at < now - settings.REGULATION_SIGNAL_MAX_AGE_S:
            return f"older than {settings.REGULATION_SIGNAL_MAX_AGE_S:g} s: too old to act on"
        if self.last_signal_at is not None and signal.at <= self.last_signal_at:
            return "a value for the same or a later instant was already dispatched"
        self.last_signal_at = signal.at
        return ""

    def idle(self) -> bool:
        """No signal for ``idle_s``: an unused product or portfolio must not keep a task and a thread for ever."""
        return time.monotonic() - self.used_at > self.idle_s

    def halt(self) -> None:
        """Cancel the background tasks without waiting (recordings already queued still run on the DB thread)."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # called from a thread without a loop
            running = None
        current = asyncio.current_task() if running is not None else None
        for task in self._tasks:
            if task is not current:
                task.cancel()
        # A dispatch still under way (at most the call timeout) records after its fan-out: leave the DB thread that
        # long, then let it end once what is queued is written.
        if running is not None and running is self._loop:
            running.call_later(self.call_timeout_s + 5.0, self._db.shutdown, False)
        else:
            self._db.shutdown(wait=False)

    def _retire(self) -> None:
        """Leave the registry and stop the background tasks (called from the refresh task itself)."""
        _registry_drop(self)
        self.halt()
        LOG.info("dispatch %s/%s: no signal for %.0f s; stopped", self.product_id, self.portfolio, self.idle_s)

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
            if self.idle():
                self._retire()
                return
            await self._between_dispatches()

    async def _between_dispatches(self) -> None:
        """While signals flow, wait for the end of the next dispatch before reloading.

        A reload of a thousand vehicles costs the server process a few hundred milliseconds of CPU; started at a
        random moment it lands in the middle of a fan-out and stretches that dispatch's latency. Right after a
        dispatch there is most of a signal interval (2 s) to spare. The state is at most one interval staler.
        """
        if self.last_dispatch_end is None or time.monotonic() - self.last_dispatch_end > FLOWING_S:
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
        if self.tracker is not None:
            ids = state.fleet.vehicle_id.tolist()
            keys = [(r.station_id, r.evse_id, r.transaction_id, v) for r, v in zip(state.routes, ids, strict=True)]
            self.tracker.install(keys)
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
                self._submit(self._basepoint_recorder, self.product_id, self.portfolio, at, chosen)

    # --- telemetry (state of charge and connections between reloads) -------------------------------------------

    async def _telemetry_loop(self) -> None:
        """Follow the ``telemetry`` group for as long as the dispatcher runs, whatever the channel layer does.

        Group memberships live in the channel layer (on Redis, a key that a restart without persistence loses):
        :meth:`_telemetry_join` adds this channel again every ``rejoin_s`` (``group_add`` is idempotent). A receive
        that fails (Redis down) is retried every second; the outage and the recovery are logged once each, and the
        state is reloaded on recovery (what the feed carried meanwhile is lost, the database has it).
        """
        layer = get_channel_layer()
        if layer is None:
            return
        channel = await layer.new_channel()  # default prefix (chargers.fanout._remote says why)
        joiner = asyncio.get_running_loop().create_task(self._telemetry_join(layer, channel))
        self._tasks.append(joiner)  # stop() cancels it even if this loop's receive swallows the cancellation
        try:
            while True:
                try:
                    message = await layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._feed_lost(exc)
                    await asyncio.sleep(FEED_RETRY_S)
                    continue
                if message.get("type") == "telemetry.update":
                    self.telemetry_apply(message.get("updates", []))
        finally:
            joiner.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(layer.group_discard(TELEMETRY_GROUP, channel), FEED_RETRY_S)

    async def _telemetry_join(self, layer: Any, channel: str) -> None:
        while True:
            try:
                await layer.group_add(TELEMETRY_GROUP, channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._feed_lost(exc)
                await asyncio.sleep(FEED_RETRY_S)
                continue
            self._feed_back()
            await asyncio.sleep(self.rejoin_s)

    def _feed_lost(self, exc: BaseException) -> None:
        if self._feed_lost_at is None:
            self._feed_lost_at = time.monotonic()
            LOG.warning(
                "dispatch %s/%s: telemetry feed lost (channel layer: %s: %s); retrying every %.0f s, "
                "state of charge comes from the database reloads meanwhile",
                self.product_id, self.portfolio, type(exc).__name__, exc, FEED_RETRY_S,
            )  # fmt: skip

    def _feed_back(self) -> None:
        if self._feed_lost_at is not None:
            LOG.warning(
                "dispatch %s/%s: telemetry feed back after %.1f s; reloading the state",
                self.product_id, self.portfolio, time.monotonic() - self._feed_lost_at,
            )  # fmt: skip
            self._feed_lost_at = None
            self._refresh_now.set()

    def soc_pct_heard(self, station_id: str) -> float | None:
        """The newest state of charge (%) the telemetry feed reported for ``station_id``; None if none yet."""
        return self._live_soc_pct.get(station_id)

    def telemetry_apply(self, updates: list[dict[str, Any]]) -> None:
        """SoC readings update the in-memory fleet; a station connecting or leaving triggers a reload (and starts
        its response gain again); metered power feeds the closed loop."""
        state = self.state
        readings: list[Reading] = []
        for update in updates:
            if update.get("kind") == "connection":
                self._refresh_now.set()
                if self.tracker is not None:
                    self.tracker.forget(update.get("station_id", ""))
                continue
            if update.get("kind") != "meter":
                continue
            station_id = update.get("station_id", "")
            values = update.get("values") or {}
            if self.tracker is not None and (reading := power_reading(station_id, update, values)) is not None:
                readings.append(reading)
            soc_pct = values.get("SoC")
            if soc_pct is None:
                continue
            pct = min(max(float(soc_pct), 0.0), 100.0)
            self._live_soc_pct[station_id] = pct
            row = state.row_of.get(station_id) if state is not None else None
            if state is None or row is None:
                continue
            self._soc[row] = pct * state.fleet.capacity_wh[row] / 100.0
            self._soc_dirty = True
        if readings and self.tracker is not None:
            try:
                self.tracker.readings(readings, now=time.time())
            except Exception:  # the closed loop is an improvement: never let it stop the feed (open loop remains)
                LOG.exception("dispatch %s/%s: response tracking failed on readings", self.product_id, self.portfolio)

    # --- the hot path -------------------------------------------------------------------------------------------

    def nothing_to_send(self, now: float) -> str:
        """Why a dispatch at ``now`` would send no setpoint (:func:`~vpp.dispatch.values.nothing_to_send`)."""
        return nothing_to_send(self.state, now)

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
        reserve, capacity = in_force(state, now)
        base = self.basepoint_w or 0
        setpoint = fleet_setpoint_w(
            basepoint_w=base, signal=float(signal.value), capacity_w=capacity, reserve_w=reserve
        )
        skipped = self.nothing_to_send(now)
        if skipped:
            result = DispatchResult(
                signal, capacity, base, reserve, setpoint, None, [], [], 0.0, now - state.loaded_at, 0, skipped
            )
            self._record(result)
            return result
        limits = caps_apply(state.fleet, setpoint, state.caps, now=now)  # the export / import caps in force
        fleet, setpoint = limits.fleet, limits.setpoint_w
        bounds = power_bounds(fleet, now=now, duration_s=self.hold_s)
        tracker, gain, correction = self.tracker, None, 0
        if tracker is not None:
            try:
                gain, correction = tracker.plan(now=now, setpoint_w=setpoint, capacity_w=capacity, bounds=bounds)
            except Exception:  # open loop for this dispatch rather than none
                LOG.exception("dispatch %s/%s: response tracking failed; open loop", self.product_id, self.portfolio)
        allocation = allocate(fleet, limits.clamp(setpoint + correction), now=now, duration_s=self.hold_s, gain=gain)
        sent_bounds = limits.station_bounds(bounds, allocation)
        commands = station_commands(state.routes, allocation, sent_bounds, valid_until_s=now + self.hold_s)
        compute_ms = (time.time() - signal.received_at) * 1000.0
        outcome: FanoutOutcome = await calls_fanout(commands, timeout=self.call_timeout_s)
        if tracker is not None and gain is not None:
            evses = [(route.station_id, route.evse_id) for route in state.routes]
            tracker.sent(evses=evses, allocation=allocation, bounds=bounds, gain=gain, requested_w=setpoint,
                         results=outcome.results)  # fmt: skip
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
            capped=limits.note(bounds.lo),
        )
        self._record(result)
        return result

    def _record(self, result: DispatchResult) -> None:
        self.last = result
        self.last_dispatch_end = time.monotonic()
        self._dispatch_ended.set()
        if self._recorder is not None:
            self._submit(self._recorder, result)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._db.submit(self._guarded, fn, *args)
        except RuntimeError:  # stopped (idle or evicted) while a dispatch was still under way
            LOG.error("dispatch %s/%s: stopped; a record was not written", self.product_id, self.portfolio)

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

# Insertion order is use order (dispatcher_for moves a used one to the end): the first is the least recently used.
_dispatchers: dict[tuple[int, int, str], Dispatcher] = {}


def dispatcher_for(*, product_id: int, portfolio: str, factory: Callable[[], Dispatcher]) -> Dispatcher:
    """This event loop's dispatcher for a product and portfolio, created and started on first use.

    Bounded: at most ``DISPATCHERS_MAX`` per process (the least recently used is stopped to make room), and each
    stops by itself after ``DISPATCH_IDLE_S`` without a signal. The intake only lets awarded portfolios through
    (:func:`vpp.dispatch.selectors.portfolio_dispatchable`); this bounds what any other path could create.
    """
    key = (id(asyncio.get_running_loop()), product_id, portfolio)
    dispatcher = _dispatchers.pop(key, None)
    if dispatcher is None or dispatcher.stopped:
        while len(_dispatchers) >= settings.DISPATCHERS_MAX:
            evicted = _dispatchers.pop(next(iter(_dispatchers)))
            LOG.warning(
                "dispatch: %d dispatchers in this process (DISPATCHERS_MAX); stopping the least recently used, %s/%s",
                settings.DISPATCHERS_MAX, evicted.product_id, evicted.portfolio,
            )  # fmt: skip
            _stop_soon(evicted)
        dispatcher = factory()
        dispatcher.start()
    _dispatchers[key] = dispatcher
    return dispatcher


def _stop_soon(dispatcher: Dispatcher) -> None:
    """Cancel an evicted dispatcher's tasks from whichever loop runs them, without waiting for its recordings."""
    loop = dispatcher._loop
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(dispatcher.halt)
    else:
        dispatcher.halt()


def _registry_drop(dispatcher: Dispatcher) -> None:
    for key, registered in list(_dispatchers.items()):
        if registered is dispatcher:
            del _dispatchers[key]


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
