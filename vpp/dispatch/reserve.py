"""Synchronized reserve dispatched by itself: an event's MW sent to the stations whether or not regulation runs.

PJM asks a synchronized reserve resource for its assigned MW within 10 minutes of an event's start, held until the
event ends. A :class:`ReserveRun` (one per event, in the server process that received it) does::

    fleet setpoint (W, + charging) = fleet power metered at the event start - assigned reserve

allocated over the plugged-in cars with :func:`fleet.numerics.allocation.allocate` for the *rest of the event* (so
every car can hold its share to the end above its floor and departure need), sent as the same SetChargingProfile
TxProfile regulation sends (:mod:`vpp.dispatch.values`), each valid until the earlier of the hold
(``DISPATCH_HOLD_S``) and the event end, re-sent every ``RESERVE_RESEND_S`` on the fleet's new state, and released
at the end (ClearChargingProfile of that profile: the stations go back to their own schedule).

**With regulation.** While regulation signals flow for the portfolio (a dispatcher of it dispatched in the last
10 s), every regulation setpoint already carries the event (``basepoint - signal x capacity - reserve``, the same
profile id): the run sends nothing then, and takes over within ``RESERVE_RESEND_S`` if the signal stops. The
release is skipped too (clearing would drop the regulation profile until its next value).

**One process per event.** A run holds a lease on its event (``ReserveDeployment.run_node`` / ``run_lease_until``,
taken and renewed by one atomic UPDATE before each send, :func:`markets.reserve.services.reserve_run_claim`): a run
that finds another process holding it stops without sending or releasing. A process that (re)starts while an event
is in force resumes it (:func:`vpp.dispatch.reserve_intake.reserve_runs_resume`, from the first committed
telemetry) once the dead process's lease has expired; two processes resuming at once do not double it.

**Fail safe.** Each setpoint ends by itself (``validTo``), so a run that dies (the process, the database) stops
the discharge within ``DISPATCH_HOLD_S`` and never past the event end. A failed reload keeps the previous state and
is logged; the run carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections

from chargers.fanout import Command, calls_fanout
from markets.regulation.selectors import reserve_deployment_end_at
from vpp.dispatch.dispatcher import FLOWING_S, dispatchers_running
from vpp.dispatch.values import PROFILE_ID, DispatchResult, DispatchState, Signal, capped_allocate, station_commands

LOG = logging.getLogger(__name__)
SOURCE = "reserve"
# Between two sends a run re-reads its stored end this often: an event ended by another thread or process (a
# utility program disabled through the API, a withdrawal the run's own process never hears of) stops its discharge
# within a few seconds, not at the next send (RESERVE_RESEND_S) or, with no wake at all, the event's own end.
END_CHECK_S = 2.0


@dataclass(frozen=True, slots=True)
class ReserveEvent:
    """What a run needs of a stored event (``markets.ReserveDeployment``)."""

    pk: int
    product_id: int
    portfolio: str
    assigned_w: int
    start: datetime
    end: datetime
    received_at: float  # epoch s the intake got it: dispatch latency is measured from here
    baseline_at: datetime | None = None  # when the baseline is measured, if not at the start (a later part of one
    # utility event: its first start, so the baseline never includes the event's own response)


def regulation_flowing(portfolio: str, now_monotonic: float | None = None) -> bool:
    """Whether this process's regulation dispatch of ``portfolio`` sent setpoints in the last ``FLOWING_S``."""
    now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
    for dispatcher in dispatchers_running():
        last, ended = dispatcher.last, dispatcher.last_dispatch_end
        if dispatcher.portfolio != portfolio or last is None or ended is None or last.skipped:
            continue
        if last.signal.source != SOURCE and now_monotonic - ended <= FLOWING_S:
            return True
    return False


class ReserveRun:
    """Dispatches one reserve event from its start to its end, then releases it (module docstring)."""

    def __init__(
        self,
        *,
        event: ReserveEvent,
        loader: Callable[..., DispatchState],
        baseline: Callable[[list[str], float], int],
        recorder: Callable[[DispatchResult], None] | None,
        clock: Callable[[], float] = time.time,
        hold_s: float | None = None,
        resend_s: float | None = None,
        call_timeout_s: float | None = None,
        claim: Callable[[int], bool] | None = None,
        regulated_elsewhere: Callable[[str, float], bool] | None = None,
        end_check_s: float | None = None,
    ) -> None:
        self.event = event
        self._claim = claim  # takes/renews the event's lease (True: this run dispatches it); None: no lease kept
        # Whether another server process's regulation dispatch of the portfolio sent setpoints since the given
        # epoch s (it carries the event in its setpoints); None: only this process's dispatchers are looked at.
        self._regulated_elsewhere = regulated_elsewhere
        self._loader = loader
        self._baseline = baseline
        self._recorder = recorder
        self._clock = clock  # tests run an event on a fixed calendar; sleeps are real
        self.hold_s = hold_s if hold_s is not None else settings.DISPATCH_HOLD_S
        self.resend_s = resend_s if resend_s is not None else settings.RESERVE_RESEND_S
        self.call_timeout_s = call_timeout_s if call_timeout_s is not None else settings.DISPATCH_CALL_TIMEOUT_S
        self.end_check_s = end_check_s if end_check_s is not None else END_CHECK_S
        self.baseline_w: int | None = None
        self.state: DispatchState | None = None
        self.results: list[DispatchResult] = []
        self.released = False
        self.claimed_elsewhere = False  # another server process holds the event's lease: this run stopped
        self.first_sent = asyncio.Event()  # set once the first setpoints went out (or the run found nothing to send)
        # The event's end as last read: its sender may cancel or shorten it (reserve_deployment_end), so each pass
        # re-reads it from the database (any process may have taken the cancellation) and _wake cuts a sleep short.
        self.end_ts = event.end.timestamp()
        self._wake = asyncio.Event()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reserve-db")

    # --- the run ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        event = self.event
        try:
            while (wait := event.start.timestamp() - self._clock()) > 0:
                await self._sleep(wait)
                await self._end_refresh()
                if self.end_ts <= event.start.timestamp():
                    return  # cancelled before it began: nothing was sent, nothing to release
            while (now := self._clock()) < self.end_ts:
                if not await self._lease_held():
                    return  # another process dispatches the event (and releases it)
                if await self._regulation_carries():
                    self.first_sent.set()  # the regulation setpoints carry the event
                else:
                    await self._send(now)
                await self._sleep(max(min(self.resend_s, self.end_ts - self._clock()), 0.0))
                await self._end_refresh()
            await self._release()
        except asyncio.CancelledError:
            raise
        except Exception:
            LOG.exception("reserve event %s of %s: run failed; setpoints end by themselves", event.pk, event.portfolio)
        finally:
            self.first_sent.set()
            with contextlib.suppress(RuntimeError):
                self._db.submit(connections.close_all)  # the DB thread's own connection: a run is not a request
            self._db.shutdown(wait=False)

    def wake(self) -> None:
        """Cut the current wait short: the event's end changed."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, cut short by :meth:`wake` or by an end, re-read every ``end_check_s``, that has passed."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), min(left, self.end_check_s))
                break  # woken: the caller re-reads the end
            except TimeoutError:
                if left <= self.end_check_s:
                    break  # the full wait is over: the caller re-reads the end
                await self._end_refresh()
                if self.end_ts <= self._clock():
                    break  # ended meanwhile (by another process or thread): no more sends
        self._wake.clear()

    async def _end_refresh(self) -> None:
        """Take an earlier end from the stored event (cancelled or shortened by its sender); a read that fails keeps
        the last known end (the setpoints sent end by themselves within the hold either way)."""
        try:
            end = await self._in_db(reserve_deployment_end_at, self.event.pk)
        except Exception:
            LOG.exception("reserve event %s: reading its end failed; keeping %s", self.event.pk, _dt(self.end_ts))
            return
        end_ts = self._clock() if end is None else end.timestamp()  # a deleted event ends now
        if end_ts < self.end_ts:
            LOG.info("reserve event %s of %s ends early, at %s", self.event.pk, self.event.portfolio, _dt(end_ts))
            self.end_ts = end_ts

    async def _lease_held(self) -> bool:
        """Take or renew the event's lease; a failed renewal (database away) keeps dispatching: the setpoints are
        absolute (another process sending the same event sends the same kind of setpoint, never an extra MW)."""
        if self._claim is None:
            return True
        try:
            held = bool(await self._in_db(self._claim, self.event.pk))
        except Exception:
            LOG.exception("reserve event %s: lease renewal failed; dispatching on", self.event.pk)
            return True
        if not held:
            self.claimed_elsewhere = True
            LOG.info("reserve event %s: another server process dispatches it", self.event.pk)
        return held

    async def _regulation_carries(self) -> bool:
        """Whether regulation dispatch of the portfolio is flowing, here or on another node: its setpoints carry the
        event (reserve included), and this run's own would fight them. A failed look (database away) says no: the
        reserve setpoints are then sent, as absolute as regulation's, and end by themselves."""
        if regulation_flowing(self.event.portfolio):
            return True
        if self._regulated_elsewhere is None:
            return False
        try:
            since = self._clock() - FLOWING_S
            return bool(await self._in_db(self._regulated_elsewhere, self.event.portfolio, since))
        except Exception:
            LOG.exception("reserve event %s: could not check for regulation on other nodes", self.event.pk)
            return False

    async def _in_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def guarded() -> Any:
            close_old_connections()
            try:
                return fn(*args)
            finally:
                close_old_connections()

        return await asyncio.get_running_loop().run_in_executor(self._db, guarded)

    async def _reload(self, now: float) -> DispatchState | None:
        try:
            self.state = await self._in_db(
                lambda: self._loader(product_id=self.event.product_id, portfolio=self.event.portfolio, now=now)
            )
        except Exception:
            LOG.exception("reserve event %s: state reload failed; keeping the previous state", self.event.pk)
        return self.state

    async def _send(self, now: float) -> None:
        event = self.event
        state = await self._reload(now)
        if state is None:
            return
        if self.baseline_w is None:
            # The fleet's metered power at the event start: what the operator measures the response against.
            stations = [route.station_id for route in state.routes]
            at = (event.baseline_at or event.start).timestamp()
            self.baseline_w = int(await self._in_db(self._baseline, stations, at))
        setpoint = self.baseline_w - event.assigned_w
        signal = Signal(event.product_id, event.portfolio, Decimal(0), _dt(now), SOURCE, self._sent_from(now))
        if len(state.fleet) == 0:
            why = "no plugged-in vehicle on a connected station"
            age = now - state.loaded_at
            self._record(
                DispatchResult(signal, 0, self.baseline_w, event.assigned_w, setpoint, None, [], [], 0.0, age, 0, why)
            )
            return
        remaining = max(self.end_ts - now, self.hold_s)  # every share holdable to the end of the event
        capped = capped_allocate(state.fleet, setpoint, state.caps, now=now, duration_s=remaining)
        allocation, setpoint = capped.allocation, capped.setpoint_w  # within the export / import caps in force
        valid_until = min(now + self.hold_s, self.end_ts)
        commands = station_commands(state.routes, allocation, capped.bounds, valid_until_s=valid_until)
        compute_ms = (time.time() - signal.received_at) * 1000.0
        outcome = await calls_fanout(commands, timeout=self.call_timeout_s)
        self._record(
            DispatchResult(
                signal=signal,
                capacity_w=0,
                basepoint_w=self.baseline_w,
                reserve_w=event.assigned_w,
                setpoint_w=setpoint,
                allocation=allocation,
                routes=state.routes,
                results=outcome.results,
                compute_ms=compute_ms,
                state_age_s=now - state.loaded_at,
                nodes=outcome.nodes,
                capped=capped.note,
            )
        )

    def _sent_from(self, _now: float) -> float:
        """Latency origin (epoch s, wall clock): the event's receipt for the first send, this send's start after."""
        return self.event.received_at if not self.results else time.time()

    async def _release(self) -> None:
        """Clear the reserve setpoints at the end (unless regulation took over: its profile must stay)."""
        if self.state is None or not self.results or await self._regulation_carries():
            return
        commands = [
            Command(route.station_id, "ClearChargingProfile", {"chargingProfileId": PROFILE_ID})
            for route in self.state.routes
        ]
        outcome = await calls_fanout(commands, timeout=self.call_timeout_s)
        self.released = True
        LOG.info(
            "reserve event %s of %s released: %d of %d stations cleared",
            self.event.pk, self.event.portfolio, sum(1 for r in outcome.results if r.status == "result"), len(commands),
        )  # fmt: skip

    def _record(self, result: DispatchResult) -> None:
        self.results.append(result)
        self.first_sent.set()
        if self._recorder is not None:
            recorder = self._recorder
            with contextlib.suppress(RuntimeError):  # the DB thread is gone once the run ended
                self._db.submit(_guarded_record, recorder, result)


def _guarded_record(recorder: Callable[[DispatchResult], None], result: DispatchResult) -> None:
    close_old_connections()
    try:
        recorder(result)
    except Exception:  # a failed record must not stop the run; the log says what was lost
        LOG.exception("recording a reserve dispatch failed")
    finally:
        close_old_connections()


def _dt(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


# --------------------------------------------------------------------------------------------------------------
# Per-process registry: one run per event
# --------------------------------------------------------------------------------------------------------------

_runs: dict[int, tuple[ReserveRun, asyncio.Task[None]]] = {}


def reserve_run_start(*, run: ReserveRun) -> tuple[ReserveRun, bool]:
    """Start ``run`` on this loop unless its event already runs here; returns (the event's run, started now)."""
    running = _runs.get(run.event.pk)
    if running is not None and not running[1].done():
        return running[0], False
    task = asyncio.get_running_loop().create_task(run.run(), name=f"reserve-{run.event.pk}")
    _runs[run.event.pk] = (run, task)
    task.add_done_callback(lambda _: _runs.pop(run.event.pk, None))
    return run, True


async def reserve_run_wake(*, event_pk: int, wait_s: float = 0.0) -> bool:
    """Tell this process's run of the event (if any) to re-read its end now; with ``wait_s``, wait that long for it
    to finish (an event that ended early: its release sent). True if one runs here."""
    running = _runs.get(event_pk)
    if running is None or running[1].done():
        return False
    run, task = running
    run.wake()
    if wait_s > 0:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), wait_s)
    return True


def reserve_runs() -> list[ReserveRun]:
    return [run for run, _ in _runs.values()]


async def reserve_runs_stop() -> None:
    """Cancel every run of this process (tests, shutdown); their setpoints end by themselves."""
    for _, task in list(_runs.values()):
        task.cancel()
    for _, task in list(_runs.values()):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
