"""Regulation dispatch entry points (the intake edges call these) and the recorders the dispatcher runs after it.

* :func:`regulation_dispatch_start` -- async, non-blocking: hands a signal value to this process's dispatcher
  (created and started on first use) and returns the running dispatch as a task. Never touches the database
  except for the very first signal of a product in a process (product lookup and first state load).
* :func:`regulation_signal_intake` (async, the WebSocket edge) / :func:`regulation_signal_accept` (sync, the REST
  edge): check the value's instant against this server's clock and its portfolio against the awards, store it
  (:func:`markets.regulation.services.regulation_signal_record`), and only then dispatch it.
* :func:`regulation_dispatch_from_sync` -- for sync edges: hands a stored value to the dispatcher on the server's
  event loop without waiting for the stations.

**Store, then dispatch.** The database's one-value-per-instant constraint is the only place where two sources, or
two server processes, sending different values for the same instant meet. Dispatching first (as this module once
did) sent a value's setpoints out and only then found the conflict (409 to the sender, the fleet following the
refused value). Storing first costs the signal one INSERT before its setpoints leave; only a value this call
created is dispatched, so an instant is dispatched once however many sources or nodes send it.

**Which instants.** A value stamped more than ``REGULATION_SIGNAL_MAX_SKEW_S`` ahead of this server's clock is
refused (:class:`SignalRefused`, nothing stored): as "the newest value" it would make every real one after it look
late. A value older than ``REGULATION_SIGNAL_MAX_AGE_S`` is stored (it is what the operator sent; a retransmission
of a stored one is still acknowledged) but not dispatched: the fleet follows a newer one, or should. A value for a
portfolio with neither regulation capacity awarded nor a reserve event in force at its instant is refused: there is
nothing to dispatch, and each portfolio named would otherwise start a dispatcher.
* :func:`dispatch_record` / :func:`dispatch_basepoint_record` -- run on the dispatcher's DB thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from asgiref.sync import SyncToAsync, async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chargers.bulk import insert_rows
from chargers.fanout import NodeListener
from markets.models import Product
from markets.regulation.models import RegulationSignal
from markets.regulation.services import (
    RegulationError,
    regulation_basepoint_record,
    regulation_signal_record,
    signal_value,
    utc_instant,
)
from markets.selectors import product_get
from vpp.dispatch.dispatcher import Dispatcher, DispatchResult, Signal, dispatcher_for, dispatchers_refresh
from vpp.dispatch.selectors import dispatch_state_load, portfolio_dispatchable
from vpp.models import Dispatch, DispatchCommand, PowerCap

__all__ = [
    "RegulationError",
    "SignalIntake",
    "SignalRefused",
    "dispatch_basepoint_record",
    "dispatch_record",
    "power_cap_end",
    "power_cap_record",
    "product_resolve",
    "regulation_dispatch_answer",
    "regulation_dispatch_from_sync",
    "regulation_dispatch_start",
    "regulation_signal_accept",
    "regulation_signal_intake",
    "signal_instant_check",
    "signal_portfolio_check",
]

LOG = logging.getLogger(__name__)
FIRST_LOAD_WAIT_S = 5.0  # the intake's answer to a process's first signal waits this long for the fleet's state
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


class SignalRefused(RegulationError):
    """A value the intake does not take (nothing stored, nothing dispatched): ``window`` describes the instants it
    takes when the instant was the reason."""

    def __init__(self, reason: str, *, window: dict[str, object] | None = None) -> None:
        super().__init__(reason)
        self.window = window


def signal_instant_check(*, at: datetime, now: float) -> None:
    """Raise :class:`SignalRefused` when ``at`` is more than ``REGULATION_SIGNAL_MAX_SKEW_S`` ahead of ``now``."""
    skew = settings.REGULATION_SIGNAL_MAX_SKEW_S
    if at.timestamp() <= now + skew:
        return
    latest = datetime.fromtimestamp(now + skew, UTC)
    raise SignalRefused(
        f"'at' {at.isoformat()} is {at.timestamp() - now:.1f} s ahead of this server's clock; values are taken up to "
        f"{skew:g} s ahead (clock skew), so no later than {latest.isoformat()}",
        window={
            "server_time": datetime.fromtimestamp(now, UTC).isoformat(),
            "latest": latest.isoformat(),
            "max_skew_s": skew,
            "dispatched_if_newer_than_s": settings.REGULATION_SIGNAL_MAX_AGE_S,
        },
    )


def signal_portfolio_check(*, product_id: int, portfolio: str, at: datetime, product_label: str = "") -> None:
    """Raise :class:`SignalRefused` unless ``portfolio`` has something to dispatch at ``at`` (an award of the product
    or a reserve event in force, :func:`vpp.dispatch.selectors.portfolio_dispatchable`)."""
    if portfolio_dispatchable(product_id=product_id, portfolio=portfolio, at=at):
        return
    raise SignalRefused(
        f"portfolio {portfolio!r} has no regulation capacity of {product_label or f'product {product_id}'} awarded "
        f"(nor a reserve event in force) at {at.isoformat()}: values are taken only for an awarded portfolio's "
        "awarded intervals"
    )


async def regulation_dispatch_start(*, signal: Signal) -> asyncio.Task[DispatchResult] | str:
    """Dispatch ``signal`` on this process's dispatcher without waiting for the stations.

    Returns the running dispatch, or why it was not dispatched (:meth:`Dispatcher.take`: not newer than the last
    one dispatched, too old, or stamped in the future).
    """
    task, why_not = await _dispatch_begin(signal, check_recipients=False)
    return task if task is not None else why_not


async def regulation_dispatch_answer(*, signal: Signal) -> str:
    """Dispatch ``signal`` without waiting for the stations; "" when setpoints are going out, else why none are:
    not taken (:meth:`Dispatcher.take`), or nothing to send them to (:meth:`Dispatcher.nothing_to_send`: no
    capacity in force, no plugged-in vehicle on a connected station). What the intake answers its sender."""
    _, why_not = await _dispatch_begin(signal, check_recipients=True)
    return why_not


async def _dispatch_begin(signal: Signal, *, check_recipients: bool) -> tuple[asyncio.Task[DispatchResult] | None, str]:
    dispatcher = dispatcher_for(
        product_id=signal.product_id,
        portfolio=signal.portfolio,
        factory=lambda: _dispatcher_create(signal.product_id, signal.portfolio),
    )
    why_not = dispatcher.take(signal)
    if why_not:
        return None, why_not
    if check_recipients and dispatcher.state is None:
        # The first signal of a process: its dispatch waits for the first load anyway; the answer waits a bounded time.
        with contextlib.suppress(TimeoutError):
            await dispatcher.ready(timeout=FIRST_LOAD_WAIT_S)
    nothing = dispatcher.nothing_to_send(time.time()) if check_recipients else ""
    # Dispatched even with nothing to send: the dispatch record says it was skipped, and why.
    return asyncio.get_running_loop().create_task(dispatcher.dispatch(signal)), nothing


NOT_SERVED_BY_ASGI = "not served by an ASGI server: no dispatcher in this process"


def served_by_asgi() -> bool:
    """This sync code runs for an ASGI server's loop, which is alive: there is a long-lived loop to dispatch on.

    asgiref marks the thread with the loop that called it and never unmarks it, so a WSGI or test-client request on
    a thread an earlier ``sync_to_async`` call used still carries a loop that has since stopped or closed."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return loop is not None and loop.is_running() and not loop.is_closed()


def regulation_dispatch_from_sync(
    *, product_id: int, portfolio: str, value: Decimal, at: datetime, source: str, received_at: float
) -> str:
    """Dispatch a stored value from a sync view (on the ASGI server's loop through ``async_to_sync``); returns ""
    when dispatched, else why not.

    ``received_at`` (epoch s) is when the edge received the value: dispatch latency is measured from it.
    """
    if not served_by_asgi():
        return NOT_SERVED_BY_ASGI
    signal = Signal(product_id, portfolio, signal_value(value), at.astimezone(UTC), source, received_at)
    return async_to_sync(regulation_dispatch_answer)(signal=signal)


@dataclass(frozen=True, slots=True)
class SignalIntake:
    """What the intake answers: the stored row, whether this call created it, whether it was dispatched and why not."""

    row: RegulationSignal
    created: bool
    dispatched: bool
    why_not: str = ""  # why it was not dispatched ("" when it was)

    @property
    def at(self) -> datetime:
        return self.row.at

    @property
    def value(self) -> Decimal:
        return self.row.value


ALREADY_STORED = "already stored (a retransmission, or another source or server took this instant first)"


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
    """Check, store, then dispatch (the module docstring says why in this order); the caller answers after this.

    Raises :class:`SignalRefused` (instant outside the window, portfolio with nothing awarded), SignalConflict (a
    different value for an instant already stored: nothing dispatched) or RegulationError (bad value, unknown
    product).
    """
    received = time.time()
    number = signal_value(value)
    moment = utc_instant(at or datetime.fromtimestamp(received, UTC), "at")
    signal_instant_check(at=moment, now=received)
    product_id = _products.get(product) or await database_sync_to_async(product_resolve)(code=product)
    row, created = await database_sync_to_async(_signal_store)(
        product_id, portfolio, moment, number, source, source_ref, user_id
    )
    if not created:
        return SignalIntake(row, created, False, ALREADY_STORED)
    why_not = await regulation_dispatch_answer(signal=Signal(product_id, portfolio, number, moment, source, received))
    return SignalIntake(row, created, not why_not, why_not)


def regulation_signal_accept(
    *,
    product: Product,
    portfolio: str,
    value: Decimal,
    at: datetime,
    source: str,
    source_ref: str = "",
    user_id: int | None = None,
    received_at: float,
) -> SignalIntake:
    """The sync edge's :func:`regulation_signal_intake` (REST): check, store, then dispatch; same errors."""
    moment = utc_instant(at, "at")
    signal_instant_check(at=moment, now=received_at)
    row, created = _signal_store(product.pk, portfolio, moment, value, source, source_ref, user_id)
    if not created:
        return SignalIntake(row, created, False, ALREADY_STORED)
    why_not = regulation_dispatch_from_sync(
        product_id=product.pk, portfolio=portfolio, value=row.value, at=moment, source=source, received_at=received_at
    )
    return SignalIntake(row, created, not why_not, why_not)


def _signal_store(
    product_id: int,
    portfolio: str,
    at: datetime,
    value: Decimal,
    source: str,
    source_ref: str,
    user_id: int | None,
) -> tuple[RegulationSignal, bool]:
    product = Product.objects.select_related("operator").get(pk=product_id)
    signal_portfolio_check(product_id=product_id, portfolio=portfolio, at=at, product_label=product_label(product))
    return regulation_signal_record(
        product=product,
        portfolio=portfolio,
        at=at,
        value=value,
        source=source,
        source_ref=source_ref,
        received_by_id=user_id,
    )


def product_label(product: Product) -> str:
    return f"{product.operator.code}:{product.code}"


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
            reason=result.skipped or "; ".join(filter(None, [allocation.reason if allocation else "", result.capped])),
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


def power_cap_record(
    *,
    portfolio: str,
    source: str,
    source_ref: str,
    start: datetime,
    end: datetime,
    export_w: int | None = None,
    import_w: int | None = None,
    reason: str = "",
) -> tuple[PowerCap, bool]:
    """Store a cap on the portfolio's net power (idempotent by ``source_ref``: a retransmission or a resumed run
    gets the stored one) and have this process's dispatchers reload at once; other processes' take it with their
    next reload (``DISPATCH_REFRESH_S``), reserve runs with their next send."""
    if export_w is None and import_w is None:
        raise ValueError("a cap caps export, import or both")
    if export_w is not None and export_w < 0:
        raise ValueError(f"an export cap of {export_w} W: must be >= 0 (no export is 0)")
    if end <= start:
        raise ValueError("a cap ends after it starts")
    cap, created = PowerCap.objects.get_or_create(
        source_ref=source_ref[:100],
        defaults={"portfolio": portfolio, "export_w": export_w, "import_w": import_w, "start": start, "end": end,
                  "source": source[:16], "reason": reason, "created_at": timezone.now()},
    )  # fmt: skip
    if created:
        transaction.on_commit(lambda: dispatchers_refresh(portfolio=portfolio))
    return cap, created


def power_cap_end(*, source_ref: str, at: datetime) -> bool:
    """The cap's event was cancelled or withdrawn: it ends at ``at`` (a cap not yet started is deleted)."""
    cap = PowerCap.objects.filter(source_ref=source_ref[:100], end__gt=at).first()
    if cap is None:
        return False
    if cap.start >= at:
        cap.delete()
    else:
        PowerCap.objects.filter(pk=cap.pk).update(end=at)
    transaction.on_commit(lambda: dispatchers_refresh(portfolio=cap.portfolio))
    return True
