"""Reserve deployment entry points (the intake edges and the utility clients call these): store an event, start its
run on this process's loop (:mod:`vpp.dispatch.reserve`), end it early, and resume the runs of events in force after a
restart. The regulation entry points are in :mod:`vpp.dispatch.services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chargers.fanout import NodeListener
from chargers.writer import writer_loop
from markets.models import Product
from markets.regulation.models import ReserveDeployment
from markets.regulation.selectors import reserve_deployment_id
from markets.regulation.services import reserve_deployment_end, reserve_deployment_record
from markets.reserve.services import reserve_events_unfinished, reserve_run_claim
from vpp.dispatch.dispatcher import dispatchers_refresh
from vpp.dispatch.reserve import ReserveEvent, ReserveRun, regulation_flowing, reserve_run_start, reserve_run_wake
from vpp.dispatch.selectors import dispatch_state_load, fleet_power_at, regulation_dispatched_since
from vpp.dispatch.services import FIRST_LOAD_WAIT_S, NOT_SERVED_BY_ASGI, dispatch_record, served_by_asgi

LOG = logging.getLogger(__name__)


RESERVE_ALREADY_STORED = "already stored: a retransmission of the event, dispatched when it was first received"


@dataclass(frozen=True, slots=True)
class ReserveIntake:
    """What the reserve intake answers: the stored event, whether this call created it, and whether its setpoints
    went out (``why_not`` says why not)."""

    row: ReserveDeployment
    created: bool
    dispatched: bool
    why_not: str = ""


def reserve_deployment_intake(
    *,
    portfolio: str,
    event_id: str,
    power_w: int | None = None,
    start: datetime,
    end: datetime,
    source: str,
    received_by_id: int | None = None,
    product: Product | None = None,
    received_at: float | None = None,
    offset_only: bool = False,
    baseline_at: datetime | None = None,
) -> ReserveIntake:
    """Record a reserve event (markets), then dispatch it by itself on this server's loop
    (:mod:`vpp.dispatch.reserve`), and have this process's regulation dispatchers of the portfolio reload at once so
    their setpoints carry it while signals flow. Other server processes' dispatchers pick it up within
    ``DISPATCH_REFRESH_S``.
    """
    received_at = time.time() if received_at is None else received_at
    row, created = reserve_deployment_record(
        portfolio=portfolio,
        event_id=event_id,
        power_w=power_w,
        start=start,
        end=end,
        source=source,
        received_by_id=received_by_id,
        product=product,
        offset_only=offset_only,
        baseline_at=baseline_at,
    )
    if not created:
        return ReserveIntake(
            row, False, False, "already stored: a retransmission of the event, dispatched when first received"
        )
    transaction.on_commit(lambda: dispatchers_refresh(portfolio=portfolio))
    why_not = reserve_dispatch_from_sync(event=reserve_event_of(row, received_at=received_at))
    return ReserveIntake(row, True, not why_not, why_not)


async def reserve_deployment_withdraw(*, portfolio: str, event_id: str) -> bool:
    """The sender withdrew a stored event: it ends now (:func:`reserve_dispatch_end`). False: no such event."""
    pk = await database_sync_to_async(reserve_deployment_id)(portfolio=portfolio, event_id=event_id)
    if pk is None:
        return False
    reason = f"withdrawn by its sender: {event_id}"
    return await reserve_dispatch_end(deployment_id=pk, at=timezone.now(), reason=reason)


def reserve_event_of(row: ReserveDeployment, *, received_at: float) -> ReserveEvent:
    """The run's view of a stored event; an event of no product is recorded under the first active reserve product."""
    product_id = row.product_id
    if product_id is None:
        product_id = (
            Product.objects.filter(kind=Product.Kind.RESERVE, active=True).order_by("id").values_list("id", flat=True)
        ).first() or 0
    return ReserveEvent(
        row.pk, product_id, row.portfolio, row.power_w, row.start, row.end, received_at, row.baseline_at
    )


def reserve_lease_s() -> float:
    """How long a run's lease on its event lasts: two and a half re-send periods (it renews at each), so a dead
    process's event is taken over within about 40 s while its last setpoints (``DISPATCH_HOLD_S``) still hold."""
    return 2.5 * settings.RESERVE_RESEND_S


def _reserve_claim(deployment_id: int) -> bool:
    return reserve_run_claim(
        deployment_id=deployment_id,
        node=NodeListener.node_id,
        now=timezone.now(),
        lease=timedelta(seconds=reserve_lease_s()),
    )


def _reserve_run_create(event: ReserveEvent) -> ReserveRun:
    return ReserveRun(
        event=event,
        loader=dispatch_state_load,
        baseline=fleet_power_at,
        recorder=dispatch_record if event.product_id else None,
        claim=_reserve_claim,
        regulated_elsewhere=regulation_dispatched_since,
    )


def _events_to_resume(now: datetime) -> list[ReserveEvent]:
    received = time.time()
    return [reserve_event_of(row, received_at=received) for row in reserve_events_unfinished(now=now)]


async def reserve_runs_resume(*, now: datetime | None = None) -> list[ReserveRun]:
    """Start a run for every reserve event in force (or still to come) that no process dispatches: what a server
    process that (re)started mid-event does, so the rest of the event is dispatched. Returns the runs started.

    Idempotent: an event already running in this process is not started again, and of two processes resuming the
    same event only the one whose lease claim matches dispatches it (the other's run stops at once)."""
    events = await database_sync_to_async(_events_to_resume)(now or timezone.now())
    started = []
    for event in events:
        run, new = reserve_run_start(run=_reserve_run_create(event))
        if new:
            started.append(run)
            LOG.warning(
                "reserve event %s of %s in force (or scheduled) with no process dispatching it: resumed here, to %s",
                event.pk, event.portfolio, event.end.isoformat(),
            )  # fmt: skip
    return started


_resume_checked_at = [-math.inf]  # time.monotonic() of this process's last resume check


def on_telemetry_resume(updates: object) -> None:
    """CSMS hook (writer thread): at most every ``RESERVE_RESEND_S``, look for reserve events to resume on the
    server loop. The first committed telemetry after a (re)start is the first moment this process can reach
    stations; checking again later also takes over from a process that died. Never raises."""
    try:
        loop = writer_loop()
        if loop is None or loop.is_closed():
            return  # not in a server process
        now = time.monotonic()
        if now - _resume_checked_at[0] < settings.RESERVE_RESEND_S:
            return
        _resume_checked_at[0] = now
        asyncio.run_coroutine_threadsafe(_resume_logged(), loop)
    except Exception:
        LOG.exception("reserve resume hook failed")


async def _resume_logged() -> None:
    try:
        await reserve_runs_resume()
    except Exception:  # the database away: the next telemetry tries again
        LOG.exception("reserve events could not be checked for resuming; trying again with the next telemetry")


async def reserve_dispatch_begin(*, event: ReserveEvent, wait_s: float = FIRST_LOAD_WAIT_S) -> str:
    """Start the event's run on this loop; "" once its first setpoints went out, else why none did (yet)."""
    run, _ = reserve_run_start(run=_reserve_run_create(event))
    if event.start.timestamp() > time.time():
        return f"scheduled: setpoints go out at the event start, {event.start.isoformat()}"
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.first_sent.wait(), wait_s)
    if not run.results:
        if run.claimed_elsewhere:
            return "dispatched by another server process (it holds the event's lease)"
        if regulation_flowing(event.portfolio):
            return ""  # the regulation setpoints carry it
        return "no setpoint sent yet (the fleet's state is still loading)"
    first = run.results[0]
    return first.skipped


def reserve_dispatch_from_sync(*, event: ReserveEvent) -> str:
    """:func:`reserve_dispatch_begin` from a sync view, on the ASGI server's loop (the run outlives the request)."""
    if not served_by_asgi():
        return NOT_SERVED_BY_ASGI
    return async_to_sync(reserve_dispatch_begin)(event=event)


async def reserve_dispatch_end(*, deployment_id: int, at: datetime, reason: str) -> bool:
    """End a reserve event early (its sender cancelled or replaced it) and stop its discharge: the stored end moves
    to ``at`` (regulation dispatch stops adding it: the portfolio's dispatchers here reload now, elsewhere within
    ``DISPATCH_REFRESH_S``), and this process's run, if it has one, wakes at once and is awaited while it clears its
    setpoints; a run in another process sees the new end at its next pass (``RESERVE_RESEND_S``), and every setpoint
    it sent ends by itself within ``DISPATCH_HOLD_S`` whatever happens. True if the event exists."""
    row = await database_sync_to_async(reserve_deployment_end)(deployment_id=deployment_id, at=at, reason=reason)
    if row is None:
        return False
    await reserve_run_wake(event_pk=deployment_id, wait_s=settings.DISPATCH_CALL_TIMEOUT_S + 5.0)
    dispatchers_refresh(portfolio=row.portfolio)
    return True
