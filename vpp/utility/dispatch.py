"""A utility's event -> dispatch, through the orchestrator's own intake services (the signal API's path).

**Accepting** (sync, :func:`utility_event_accept`): store the event version as received
(:func:`~vpp.utility.services.utility_event_record`) and answer optIn only when it can be dispatched; a version that
cannot (no load reduction asked, a signal not dispatched here, a disabled program) is stored as refused, and the
answer is optOut with the reason kept.

**Dispatching** (async, :class:`EventRuns`, on the loop that can reach the stations): ``UTILITY_EVENT_LEAD_S``
before each interval starts, the interval becomes a reserve deployment of the program's portfolio
(:func:`vpp.dispatch.services.reserve_deployment_intake`, the ``POST /api/regulation/reserve`` path: extra
discharge on top of the basepoint) starting then, so its setpoints reach the stations before the utility's start;
the portfolio's dispatchers reload with it, and a neutral value (0) of the program's regulation product goes in
through :func:`vpp.dispatch.services.regulation_signal_intake` (the ``/api/regulation/signal`` path: check, store,
dispatch) at once and every ``UTILITY_EVENT_REFRESH_S`` until the interval ends (each setpoint is valid
``DISPATCH_HOLD_S``: the stations drop it by themselves if the aggregator goes quiet). While the product's own
regulation signal flows its setpoints carry the deployment, and no neutral value is sent.

A cancelled event stops its run: no more setpoints, and those sent lapse within ``DISPATCH_HOLD_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from markets.regulation.models import SignalSource
from markets.regulation.services import RegulationError
from vpp.dispatch.dispatcher import dispatchers_running
from vpp.dispatch.services import regulation_signal_intake, reserve_deployment_intake
from vpp.utility.models import EventStatus, UtilityEvent, UtilityProgram
from vpp.utility.services import utility_event_cancel, utility_event_record, utility_event_status
from vpp.utility.signals import EventPlan, Interval

LOG = logging.getLogger(__name__)
OPT_IN, OPT_OUT = "optIn", "optOut"


@dataclass(frozen=True, slots=True)
class Accepted:
    event: UtilityEvent
    created: bool
    opt: str


def utility_event_accept(*, program: UtilityProgram, plan: EventPlan, payload: dict[str, Any]) -> Accepted:
    """Store ``plan``'s event version and decide the answer (optIn: it will be dispatched)."""
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
    refusal = plan.refusal or ("" if program.enabled else "the program is disabled")
    if plan.cancelled:
        status, refusal = EventStatus.CANCELLED, "cancelled by the utility"
    elif refusal or event.status == EventStatus.REFUSED:
        status, refusal = EventStatus.REFUSED, refusal or event.status_reason
    else:
        status = EventStatus.SCHEDULED
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

    def __init__(self, *, lead_s: float | None = None, refresh_s: float | None = None) -> None:
        self.lead_s = settings.UTILITY_EVENT_LEAD_S if lead_s is None else lead_s
        self.refresh_s = settings.UTILITY_EVENT_REFRESH_S if refresh_s is None else refresh_s
        self._runs: dict[tuple[int, str], asyncio.Task[None]] = {}  # (program, event ref) -> its run

    def schedule(self, *, program: UtilityProgram, event: UtilityEvent, plan: EventPlan) -> None:
        """Run ``plan`` (replacing an earlier version's run of the same event)."""
        key = (program.pk, plan.event_ref)
        self.cancel(program_id=program.pk, event_ref=plan.event_ref)
        if event.status != EventStatus.SCHEDULED:
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
        task.cancel()
        return True

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
                if interval.power_w > 0:
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
        await database_sync_to_async(_reserve_record)(program, ref, interval, begin)
        await _dispatchers_reload(program.portfolio)
        first = True
        sent_at: datetime | None = None
        while (now := timezone.now()) < interval.end:
            if not _regulation_flowing(program.product_id, program.portfolio, sent_at):
                sent_at = await _neutral_value(program, plan, now)
                if first and sent_at is not None:
                    first = False
                    await database_sync_to_async(utility_event_status)(
                        event_id=event_id, status=EventStatus.ACTIVE, first_dispatch_at=now
                    )
            await asyncio.sleep(min(self.refresh_s, max((interval.end - now).total_seconds(), 0.0)))


def _reserve_record(program: UtilityProgram, ref: str, interval: Interval, begin: datetime) -> None:
    start = max(begin, timezone.now().replace(microsecond=0))
    reserve_deployment_intake(
        portfolio=program.portfolio,
        event_id=ref,
        power_w=interval.power_w,
        start=min(start, interval.start),
        end=interval.end,
        source=SignalSource.UTILITY_API,
    )


async def _sleep_until(moment: datetime) -> None:
    """Sleep until the wall-clock ``moment`` (re-checked at least every minute: the clock may be stepped)."""
    while True:  # a wall-clock instant, not another task, is waited for
        left = moment.timestamp() - time.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 60.0))


async def _dispatchers_reload(portfolio: str) -> None:
    """Reload this process's dispatchers of ``portfolio`` now (the deployment just stored is in their state)."""
    for dispatcher in dispatchers_running():
        if dispatcher.portfolio == portfolio:
            await dispatcher.refresh()


def _regulation_flowing(product_id: int, portfolio: str, own_at: datetime | None) -> bool:
    """Whether another source's regulation values newer than our own last one reach this process's dispatcher."""
    flowing_s = 10.0
    for dispatcher in dispatchers_running():
        if dispatcher.product_id != product_id or dispatcher.portfolio != portfolio:
            continue
        last = dispatcher.last_signal_at
        if last is not None and (own_at is None or last > own_at) and time.time() - last.timestamp() < flowing_s:
            return True
    return False


async def _neutral_value(program: UtilityProgram, plan: EventPlan, now: datetime) -> datetime | None:
    """A value 0 of the program's product now, through the signal intake: the setpoint is basepoint - deployment."""
    label = f"{program.product.operator.code}:{program.product.code}"
    at = now.astimezone(UTC)
    try:
        intake = await regulation_signal_intake(
            product=label,
            portfolio=program.portfolio,
            value=Decimal(0),
            at=at,
            source=SignalSource.UTILITY_API,
            source_ref=f"utility:{program.pk}:{plan.event_ref}"[:200],
        )
    except RegulationError as exc:
        LOG.warning("utility program %s: event %s not dispatched: %s", program.pk, plan.event_ref, exc)
        return None
    if not intake.dispatched:
        LOG.warning("utility program %s: event %s: %s", program.pk, plan.event_ref, intake.why_not)
    return at
