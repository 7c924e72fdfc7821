"""Regulation dispatch entry points (the intake edges call these) and the recorders the dispatcher runs after it.

* :func:`regulation_dispatch_start` -- async, non-blocking: hands a signal value to this process's dispatcher
  (created and started on first use) and returns the running dispatch as a task. Never touches the database
  except for the very first signal of a product in a process (product lookup and first state load).
* :func:`regulation_signal_intake` -- what the WebSocket edge does: validate, dispatch, then store the value
  (:func:`markets.regulation.services.regulation_signal_record`) and answer.
* :func:`regulation_dispatch_from_sync` -- for sync edges (the REST intake ``POST /api/regulation/signal``):
  hands a validated value to the dispatcher on the server's event loop without waiting for the stations.
* :func:`dispatch_record` / :func:`dispatch_basepoint_record` -- run on the dispatcher's DB thread.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from asgiref.sync import SyncToAsync, async_to_sync
from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from chargers.bulk import insert_rows
from chargers.fanout import NodeListener
from markets.models import Product
from markets.regulation.models import ReserveDeployment
from markets.regulation.services import (
    RegulationError,
    regulation_basepoint_record,
    regulation_signal_record,
    reserve_deployment_record,
    signal_value,
    utc_instant,
)
from markets.selectors import product_get
from vpp.dispatch.dispatcher import Dispatcher, DispatchResult, Signal, dispatcher_for, dispatchers_refresh
from vpp.dispatch.selectors import dispatch_state_load
from vpp.models import Dispatch, DispatchCommand

__all__ = [
    "RegulationError",
    "SignalIntake",
    "dispatch_basepoint_record",
    "dispatch_record",
    "product_resolve",
    "regulation_dispatch_from_sync",
    "regulation_dispatch_start",
    "regulation_signal_intake",
]

_products: dict[str, int] = {}  # "operator:code" -> product id, cached per process (products do not move)


def product_resolve(*, code: str) -> int:
    """The id of the active regulation product ``code`` names (:func:`markets.selectors.product_get`)."""
    if code in _products:
        return _products[code]
    try:
        product = product_get(ref=code, kind=Product.Kind.REGULATION, active_only=True)
    except Product.DoesNotExist as exc:
        raise RegulationError(str(exc)) from None
    _products[code] = product.pk
    return product.pk


def _dispatcher_create(product_id: int, portfolio: str) -> Dispatcher:
    return Dispatcher(
        product_id=product_id,
        portfolio=portfolio,
        loader=dispatch_state_load,
        recorder=dispatch_record,
        basepoint_recorder=dispatch_basepoint_record,
    )


async def regulation_dispatch_start(*, signal: Signal) -> asyncio.Task[DispatchResult] | None:
    """Dispatch ``signal`` on this process's dispatcher without waiting for the stations.

    Returns None when the value is not newer than the last one dispatched (a retransmission or a late value: the
    stations already follow a newer one).
    """
    dispatcher = dispatcher_for(
        product_id=signal.product_id,
        portfolio=signal.portfolio,
        factory=lambda: _dispatcher_create(signal.product_id, signal.portfolio),
    )
    if dispatcher.last_signal_at is not None and signal.at <= dispatcher.last_signal_at:
        return None
    dispatcher.last_signal_at = signal.at
    return asyncio.get_running_loop().create_task(dispatcher.dispatch(signal))


def regulation_dispatch_from_sync(
    *, product_id: int, portfolio: str, value: Decimal, at: datetime, source: str, received_at: float
) -> bool:
    """Dispatch from a sync view (runs on the ASGI server's loop through ``async_to_sync``); True if dispatched.

    ``received_at`` (epoch s) is when the edge received the value: dispatch latency is measured from it.
    """
    if getattr(SyncToAsync.threadlocal, "main_event_loop", None) is None:
        # Not inside an ASGI server (a WSGI or test-client request): no long-lived loop to dispatch on.
        return False
    signal = Signal(product_id, portfolio, signal_value(value), at.astimezone(UTC), source, received_at)
    return async_to_sync(regulation_dispatch_start)(signal=signal) is not None


def reserve_deployment_intake(
    *,
    portfolio: str,
    event_id: str,
    power_w: int,
    start: datetime,
    end: datetime,
    source: str,
    received_by_id: int | None = None,
) -> tuple[ReserveDeployment, bool]:
    """Record a reserve event (markets) and, once committed, have this process's dispatchers of the portfolio
    reload at once: the next signal's setpoint carries the extra discharge. Other server processes pick it up
    within ``DISPATCH_REFRESH_S``; a 10-minute reserve product leaves ample time for both.
    """
    row, created = reserve_deployment_record(
        portfolio=portfolio,
        event_id=event_id,
        power_w=power_w,
        start=start,
        end=end,
        source=source,
        received_by_id=received_by_id,
    )
    if created:
        transaction.on_commit(lambda: dispatchers_refresh(portfolio=portfolio))
    return row, created


@dataclass(frozen=True, slots=True)
class SignalIntake:
    """What the intake answers: the stored row's instant and whether it was new and dispatched."""

    at: datetime
    value: Decimal
    created: bool
    dispatched: bool


async def regulation_signal_intake(
    *,
    product: str,
    portfolio: str,
    value: object,
    at: datetime | None,
    source: str,
    source_ref: str = "",
    user_id: int | None = None,
) -> SignalIntake:
    """Validate, dispatch at once, then store the value durably and return (the caller answers after this).

    Raises RegulationError (bad value, unknown product, a different value for an instant already stored).
    """
    received = time.time()
    number = signal_value(value)
    moment = utc_instant(at or datetime.fromtimestamp(received, UTC), "at")
    product_id = _products.get(product) or await database_sync_to_async(product_resolve)(code=product)
    signal = Signal(product_id, portfolio, number, moment, source, received)
    task = await regulation_dispatch_start(signal=signal)
    row, created = await database_sync_to_async(_signal_store)(
        product_id, portfolio, moment, number, source, source_ref, user_id
    )
    return SignalIntake(at=row.at, value=row.value, created=created, dispatched=task is not None)


def _signal_store(product_id, portfolio, at, value, source, source_ref, user_id):
    product = Product.objects.get(pk=product_id)
    return regulation_signal_record(
        product=product,
        portfolio=portfolio,
        at=at,
        value=value,
        source=source,
        source_ref=source_ref,
        received_by_id=user_id,
    )


def dispatch_basepoint_record(product_id: int, portfolio: str, at: datetime, basepoint_w: int) -> None:
    """The basepoint dispatch regulates around from ``at`` (what scoring measures the response against)."""
    regulation_basepoint_record(
        product=Product.objects.get(pk=product_id), portfolio=portfolio, at=at, basepoint_w=basepoint_w
    )


DISPATCH_COMMAND_COLUMNS = (
    "dispatch_id", "station_id", "evse_id", "vehicle_id", "power_w", "status", "answer", "latency_ms",
)  # fmt: skip


def dispatch_record(result: DispatchResult) -> None:
    """Store one dispatch and its per-station commands and answers (after the fan-out, on the DB thread)."""
    by_station = {r.station_id: r for r in result.results}
    t0 = result.signal.received_at
    allocation = result.allocation
    latencies = result.latencies_ms()
    with transaction.atomic():
        row = Dispatch.objects.create(
            product_id=result.signal.product_id,
            portfolio=result.signal.portfolio,
            node=NodeListener.node_id[:32],
            signal_at=result.signal.at,
            signal=result.signal.value,
            source=result.signal.source,
            received_at=datetime.fromtimestamp(t0, UTC),
            capacity_w=result.capacity_w,
            basepoint_w=result.basepoint_w,
            reserve_w=result.reserve_w,
            setpoint_w=result.setpoint_w,
            allocated_w=allocation.achieved_w if allocation is not None else 0,
            feasible=allocation.feasible if allocation is not None else False,
            reason=result.skipped or (allocation.reason if allocation is not None else "") or "",
            vehicles=len(result.routes),
            commands=len(result.results),
            accepted=result.accepted,
            failed=len(result.results) - result.accepted,
            compute_ms=result.compute_ms,
            p50_ms=result.p50_ms,
            last_ms=max(latencies) if latencies else None,
            state_age_s=result.state_age_s,
            recorded_at=timezone.now(),
        )
        if allocation is None:
            return
        rows = []
        for route, vehicle_id, power in zip(
            result.routes, allocation.vehicle_id.tolist(), allocation.power_w.tolist(), strict=True
        ):
            answer = by_station.get(route.station_id)
            latency = (answer.answered_at - t0) * 1000.0 if answer and answer.answered_at else None
            status, code = (answer.status, answer.answer[:40]) if answer else ("offline", "")
            rows.append((row.pk, route.station_id, route.evse_id, vehicle_id, power, status, code, latency))
        # A thousand rows per dispatch, every 2 s, in the server process that dispatches: COPY, not the ORM.
        insert_rows(DispatchCommand, DISPATCH_COMMAND_COLUMNS, rows)
