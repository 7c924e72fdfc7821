"""A utility's event -> dispatch, through the orchestrator's own intake services (the signal API's path).

**Accepting** (sync, :func:`utility_event_accept`): store the event version as received
(:func:`~vpp.utility.services.utility_event_record`) and answer optIn only when it can be dispatched; a version that
cannot (no load reduction asked, a signal not dispatched here, a disabled program) is stored as refused, and the
answer is optOut with the reason kept.

**Dispatching** (async, :class:`EventRuns`, on the loop that can reach the stations): ``UTILITY_EVENT_LEAD_S``
before each interval starts, the interval becomes a reserve deployment of the program's portfolio
(:func:`vpp.dispatch.reserve_intake.reserve_deployment_intake`, the ``POST /api/regulation/reserve`` path)
starting then, so its setpoints reach the stations before the utility's start. The deployment dispatches by itself
(:mod:`vpp.dispatch.reserve`: the fleet's power at its start minus the W asked, re-sent until its end, then
released), and while regulation signals flow for the portfolio their setpoints carry it. A program of a reserve
product deploys that product (measured and settled as its events); a program of a regulation product deploys an
offset only (``offset_only``: never counted as a deployment of a reserve award the portfolio may also hold).

A process that restarts (the clients' or the server's) resumes, when the server sends an event again, each stored
version still scheduled or active: its deployments' runs start again (the baseline still the one at their start).
Every deployment of an event after its first -- a later interval, a new version of the event under way -- is
measured against the event's first baseline (:func:`_reserve_record`), never re-measured mid-event.

A cancelled event (or a newer version of it) stops its run: the deployment in force is withdrawn
(:func:`vpp.dispatch.reserve_intake.reserve_deployment_withdraw`: its end stored as now, its setpoints released),
and so are its caps; records still being made when the cancellation arrives are waited for and ended too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from fleet.numerics.arrays import power_bounds
from markets.models import Product
from markets.regulation.models import ReserveDeployment, SignalSource
from markets.regulation.services import RegulationError
from vpp.dispatch.reserve_intake import (
    ReserveIntake,
    reserve_deployment_intake,
    reserve_deployment_withdraw,
    reserve_dispatch_from_sync,
    reserve_event_of,
)
from vpp.dispatch.selectors import dispatch_state_load, fleet_power_at
from vpp.dispatch.services import power_cap_end, power_cap_record
from vpp.dispatch.values import departure_need_wins
from vpp.utility.models import EventStatus, UtilityEvent, UtilityProgram
from vpp.utility.selectors import event_baseline_at, event_newer
from vpp.utility.services import utility_event_cancel, utility_event_record, utility_event_status
from vpp.utility.signals import EventPlan, Interval

LOG = logging.getLogger(__name__)
OPT_IN, OPT_OUT = "optIn", "optOut"
RUNNABLE = (EventStatus.SCHEDULED, EventStatus.ACTIVE)
DISABLED_REASON = "the program is disabled"


@dataclass(frozen=True, slots=True)
class Accepted:
    event: UtilityEvent
    created: bool
    opt: str
    stale: bool = False  # older than a version stored: neither dispatched nor allowed to cancel or replace it


def utility_event_accept(*, program: UtilityProgram, plan: EventPlan, payload: dict[str, Any]) -> Accepted:
    """Store ``plan``'s event version and decide the answer (optIn: it will be dispatched). A version older than
    one stored (a delayed or replayed message) is stored refused and changes nothing: not even its cancellation
    applies (the newer version stands)."""
    stale = event_newer(program, plan.event_ref, plan.modification) is not None
    if stale:
        event, created = utility_event_record(
            program=program, event_ref=plan.event_ref, modification=plan.modification, kind=plan.kind,
            start=plan.start, end=plan.end, power_w=plan.power_w, limit_w=plan.limit_w, payload=payload,
        )  # fmt: skip
        if created:
            utility_event_status(event_id=event.pk, status=EventStatus.REFUSED, opt=OPT_OUT)
            event.refresh_from_db()
        return Accepted(event, created, OPT_OUT, stale=True)
    if plan.cancelled:
        utility_event_cancel(program=program, event_ref=plan.event_ref, reason="cancelled by the utility")
    event, created = utility_event_record(
        program=program,
        event_ref=plan.event_ref,
        modification=plan.modification,
        kind=plan.kind,
        start=plan.start,
        end=plan.end,
        power_w=plan.power_w,
        limit_w=plan.limit_w,
        payload=payload,
    )
    if not created:
        return Accepted(event, False, event.opt or (OPT_IN if event.status != EventStatus.REFUSED else OPT_OUT))
    refusal = plan.refusal or ("" if program.enabled else DISABLED_REASON)
    if plan.cancelled:
        status, refusal = EventStatus.CANCELLED, "cancelled by the utility"
    elif refusal or event.status == EventStatus.REFUSED:
        status, refusal = EventStatus.REFUSED, refusal or event.status_reason
    else:
        status, refusal = EventStatus.SCHEDULED, plan.note  # e.g. an import limit below 0 held at 0
    opt = OPT_IN if status in (EventStatus.SCHEDULED, EventStatus.CANCELLED) else OPT_OUT
    utility_event_status(event_id=event.pk, status=status, reason=refusal, opt=opt)
    event.refresh_from_db()
    LOG.info("utility program %s: event %s#%s %s (%s)", program.pk, plan.event_ref, plan.modification, opt, refusal)
    return Accepted(event, True, opt)


def reserve_ref(program: UtilityProgram, plan_ref: str, modification: int, index: int) -> str:
    """The reserve deployment's event id: unique per program, event version and interval (100 characters)."""
    head = f"{program.protocol}:{program.pk}:"
    tail = f":{modification}:{index}"
    return head + plan_ref[: 100 - len(head) - len(tail)] + tail


class EventRuns:
    """The dispatch of accepted events, one asyncio task per event, on the loop that owns it."""

    def __init__(self, *, lead_s: float | None = None) -> None:
        self.lead_s = settings.UTILITY_EVENT_LEAD_S if lead_s is None else lead_s
        self._runs: dict[tuple[int, str], asyncio.Task[None]] = {}  # (program, event ref) -> its run
        self._withdrawn: set[asyncio.Task[Any]] = set()  # cancelled by the utility, not by a shutdown

    def take(self, *, program: UtilityProgram, accepted: Accepted, plan: EventPlan) -> None:
        """Run a new version; or resume a stored one still to do that this process does not run (it restarted)."""
        if accepted.stale:
            return  # the newer version stored goes on as it is
        if accepted.created:
            self.schedule(program=program, event=accepted.event, plan=plan)
        elif accepted.event.status in RUNNABLE and (program.pk, plan.event_ref) not in self._runs:
            LOG.info("utility program %s: event %s resumed", program.pk, plan.event_ref)
            self.schedule(program=program, event=accepted.event, plan=plan)

    def schedule(self, *, program: UtilityProgram, event: UtilityEvent, plan: EventPlan) -> None:
        """Run ``plan`` (replacing an earlier version's run of the same event)."""
        key = (program.pk, plan.event_ref)
        self.cancel(program_id=program.pk, event_ref=plan.event_ref)
        if event.status not in RUNNABLE:
            return
        task = asyncio.get_running_loop().create_task(self._run(program, event.pk, plan), name=f"utility-{key}")
        self._runs[key] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for key, running in list(self._runs.items()):
            if running is task:
                del self._runs[key]

    def cancel(self, *, program_id: int, event_ref: str) -> bool:
        task = self._runs.pop((program_id, event_ref), None)
        if task is None:
            return False
        self._withdrawn.add(task)
        task.add_done_callback(self._withdrawn.discard)
        task.cancel()
        return True

    def withdraw_program(self, *, program_id: int) -> list[str]:
        """Withdraw every run of a program (disabled, deleted or re-enrolled elsewhere): each deployment in force
        ends now, its setpoints released. The event refs withdrawn."""
        refs = [ref for (pk, ref) in self._runs if pk == program_id]
        for ref in refs:
            self.cancel(program_id=program_id, event_ref=ref)
        return refs

    async def stop(self) -> None:
        tasks = list(self._runs.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runs.clear()

    @property
    def running(self) -> int:
        return len(self._runs)

    async def _run(self, program: UtilityProgram, event_id: int, plan: EventPlan) -> None:
        try:
            for index, interval in enumerate(plan.intervals):
                if interval.dispatched:
                    await self._interval(program, event_id, plan, index, interval)
            await database_sync_to_async(utility_event_status)(event_id=event_id, status=EventStatus.COMPLETED)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one event's failure must not stop the program's client; the row says why
            LOG.exception("utility program %s: event %s could not be dispatched", program.pk, plan.event_ref)
            await database_sync_to_async(utility_event_status)(
                event_id=event_id, status=EventStatus.REFUSED, reason=f"dispatch failed: {exc}"
            )

    async def _interval(
        self, program: UtilityProgram, event_id: int, plan: EventPlan, index: int, interval: Interval
    ) -> None:
        begin = interval.start - timedelta(seconds=self.lead_s)
        await _sleep_until(begin)
        if interval.end <= timezone.now():
            return
        ref = reserve_ref(program, plan.event_ref, plan.modification, index)
        # The records (caps, deployment) are made in a task of their own, awaited shielded inside the same try that
        # ends them: a withdrawal arriving while they are being made (a thread this task cannot stop) waits for them
        # and ends what was made, so no deployment or cap is left in force with no run to end it.
        records = asyncio.ensure_future(_records(program, event_id, ref, index, interval, begin))
        records.add_done_callback(_retrieved)
        try:
            made = await asyncio.shield(records)
            if made is None:  # the program was disabled or the event withdrawn meanwhile: nothing put in force
                LOG.info("utility program %s: event %s interval %s not dispatched: no longer wanted", program.pk,
                         plan.event_ref, index)  # fmt: skip
                return
            note, intake = made
            if intake is None and (interval.power_w > 0 or interval.target_w is not None):
                LOG.info("utility program %s: event %s interval %s: already at or below its target", program.pk,
                         plan.event_ref, index)  # fmt: skip
            elif intake is not None and not intake.dispatched:
                LOG.warning("utility program %s: event %s: %s", program.pk, plan.event_ref, intake.why_not)
            if index == 0 or (intake is not None and intake.dispatched):
                await database_sync_to_async(_active)(event_id, timezone.now())
            if note:
                LOG.warning("utility program %s: event %s: %s", program.pk, plan.event_ref, note)
                await database_sync_to_async(utility_event_status)(
                    event_id=event_id, status=EventStatus.ACTIVE, reason=note
                )
            await _sleep_until(interval.end)
        except asyncio.CancelledError:
            # Withdrawn by the utility (cancelled or replaced): the deployment and the caps end now, once made
            # (shielded: this task is being cancelled). A shutdown leaves them stored; the setpoints end by themselves
            # within DISPATCH_HOLD_S, the caps at the interval's end.
            if asyncio.current_task() in self._withdrawn:
                await asyncio.shield(_withdraw(program, ref, capped=interval.capped, made=records))
            raise


async def _records(
    program: UtilityProgram, event_id: int, ref: str, index: int, interval: Interval, begin: datetime
) -> tuple[str, ReserveIntake | None] | None:
    """The interval's caps (and the note they call for) and its reserve deployment (None: nothing to deploy).

    None when the program is disabled (or gone) or the event no longer runnable: a disable ends what is in force
    at once, but the runner withdraws this run a moment later (after a reload), and an interval starting in between
    must not put a new discharge in force.
    """
    if not await database_sync_to_async(_wanted)(program.pk, event_id):
        return None
    note = await database_sync_to_async(_caps_record)(program, ref, interval, begin) if interval.capped else ""
    intake: ReserveIntake | None = None
    if interval.power_w > 0 or interval.target_w is not None:
        try:
            intake = await database_sync_to_async(_reserve_record)(program, event_id, ref, interval, begin)
        except RegulationError as exc:
            raise RuntimeError(f"the reserve intake refused interval {index}: {exc}") from exc
    return note, intake


def _wanted(program_id: int, event_id: int) -> bool:
    return UtilityEvent.objects.filter(
        pk=event_id, program_id=program_id, program__enabled=True, status__in=RUNNABLE
    ).exists()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a records task's failure retrieved: the run awaiting it logs it (``_run``), and a run cancelled by a
    shutdown no longer awaits it (asyncio would otherwise complain at exit)."""
    if not task.cancelled():
        task.exception()


def _active(event_id: int, at: datetime) -> None:
    """The first interval went to dispatch: the event is active from then (its first dispatch time kept)."""
    UtilityEvent.objects.filter(pk=event_id, first_dispatch_at__isnull=True).update(first_dispatch_at=at)
    utility_event_status(event_id=event_id, status=EventStatus.ACTIVE)


async def _withdraw(
    program: UtilityProgram, ref: str, *, capped: bool = False, made: asyncio.Future[Any] | None = None
) -> None:
    if made is not None:  # the records still being made: ended once they are (a failure made nothing to end)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await made
    if capped:
        try:
            await database_sync_to_async(power_cap_end)(source_ref=ref, at=timezone.now())
        except Exception:  # the cap still ends with its interval
            LOG.exception("utility program %s: ending the caps of %s failed", program.pk, ref)
    try:
        await reserve_deployment_withdraw(portfolio=program.portfolio, event_id=ref)
    except Exception:  # its setpoints still end by themselves within DISPATCH_HOLD_S
        LOG.exception("utility program %s: withdrawing reserve deployment %s failed", program.pk, ref)


def _caps_record(program: UtilityProgram, ref: str, interval: Interval, begin: datetime) -> str:
    """Store the interval's export / import caps of the portfolio (from ``begin``: the setpoints leading the start
    obey them too); "" or, where the cars' departure needs ask for more than an import cap, a note saying that the
    departure need wins (the event keeps it as its status reason)."""
    power_cap_record(
        portfolio=program.portfolio, source=SignalSource.UTILITY_API, source_ref=ref, start=begin, end=interval.end,
        export_w=interval.export_cap_w, import_w=interval.import_cap_w, reason=f"utility program {program.pk}",
    )  # fmt: skip
    if interval.import_cap_w is None:
        return ""
    now = timezone.now().timestamp()
    fleet = dispatch_state_load(product_id=program.product_id, portfolio=program.portfolio, now=now).fleet
    if not len(fleet):
        return ""
    lo = power_bounds(fleet, now=now, duration_s=max(interval.end.timestamp() - now, 1.0)).lo
    if not departure_need_wins(lo, interval.import_cap_w):
        return ""
    return (
        f"departure need {int(np.maximum(lo, 0).sum())} W: the fleet draws at least {int(lo.sum())} W, above the "
        f"import limit {interval.import_cap_w} W: the cars that must charge to leave on time charge (departure "
        "need wins)"
    )


def target_reduction_w(program: UtilityProgram, target_w: int, at: datetime) -> int:
    """W of reduction that brings the portfolio's metered power now down to ``target_w``: the reserve run measures
    its baseline the same way (:func:`vpp.dispatch.selectors.fleet_power_at` of the dispatchable stations), so its
    setpoint, baseline - reduction, is the target."""
    state = dispatch_state_load(product_id=program.product_id, portfolio=program.portfolio, now=at.timestamp())
    stations = [route.station_id for route in state.routes]
    return fleet_power_at(stations, at.timestamp()) - target_w


def _reserve_record(
    program: UtilityProgram, event_id: int, ref: str, interval: Interval, begin: datetime
) -> ReserveIntake | None:
    """The interval's reserve deployment (None: a target the portfolio already meets, nothing to deploy).

    Stored already (this process restarted during the interval): that deployment, whose run is resumed here.

    **One baseline per event.** The first deployment of an event (of any version) measures the fleet's power at its
    start; every later one -- a later interval, or a new version of the event under way (a modification) -- is
    measured against that same instant (``baseline_at``), never re-measured mid-event: the fleet's power then
    includes the event's own response, and a reduction asked from it would be counted twice. A target's W of
    reduction is worked out against the same instant, so the run's setpoint (baseline - W) is the target.
    """
    stored = ReserveDeployment.objects.filter(portfolio=program.portfolio, event_id=ref).first()
    if stored is not None:
        why_not = reserve_dispatch_from_sync(event=reserve_event_of(stored, received_at=time.time()))
        return ReserveIntake(stored, False, not why_not, why_not)
    start = min(max(begin, timezone.now().replace(microsecond=0)), interval.start)
    first = event_baseline_at(program=program, event_id=event_id)
    baseline_at = first if first is not None and first < start else None
    power_w = interval.power_w
    if interval.target_w is not None:
        power_w = target_reduction_w(program, interval.target_w, baseline_at or start)
        if power_w <= 0:
            return None
    reserve = program.product.kind == Product.Kind.RESERVE
    intake = reserve_deployment_intake(
        portfolio=program.portfolio,
        event_id=ref,
        power_w=power_w,
        start=start,
        end=interval.end,
        source=SignalSource.UTILITY_API,
        product=program.product if reserve else None,
        offset_only=not reserve,
        baseline_at=baseline_at,
    )
    UtilityEvent.objects.filter(pk=event_id, dispatch_ref="").update(dispatch_ref=ref)  # this version's first
    return intake


async def _sleep_until(moment: datetime) -> None:
    """Sleep until the wall-clock ``moment`` (re-checked at least every minute: the clock may be stepped)."""
    while True:  # a wall-clock instant, not another task, is waited for
        left = moment.timestamp() - time.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 60.0))
