"""Regulation records: signal values, basepoints, reserve events and prices as they arrive; the package's errors.

* :func:`regulation_signal_record` / :func:`regulation_signal_import` -- store signal values (REST, WebSocket, file).
* :func:`regulation_basepoint_record` -- dispatch records the fleet basepoint it regulates around.
* :func:`reserve_deployment_record` -- a reserve event called on a portfolio.
* :func:`regulation_price_record` / :func:`energy_price_record` -- price beliefs settlement reads.
* :func:`signal_value` / :func:`utc_instant` -- the one parser of a signal value and of an instant (the vpp edges too).

Scoring from stored data is in :mod:`.performance`, settlement in :mod:`.settling`, the register check in
:mod:`.reconciliation`; the pure arithmetic they run in :mod:`.scoring`, :mod:`.settlement`, :mod:`.metering`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from markets.models import Award, Product
from markets.regulation.models import (
    EnergyPrice,
    RegulationBasepoint,
    RegulationPrice,
    RegulationSignal,
    ReserveDeployment,
    SignalSource,
)
from markets.regulation.signals import SignalTrace

LOG = logging.getLogger(__name__)
SIGNAL_PLACES = Decimal("0.00001")


class RegulationError(ValueError):
    """A regulation request that cannot be carried out; the message says why."""


class SignalConflict(RegulationError):
    """A different value for a signal instant already stored."""


class ReserveConflict(RegulationError):
    """A different reserve event under a reference already stored for the portfolio."""


#: Longest reserve event accepted (PJM synchronized reserve events last at most 30 minutes; leave room).
RESERVE_MAX = timedelta(hours=4)


def utc_instant(moment: datetime, name: str) -> datetime:
    if timezone.is_naive(moment):
        raise RegulationError(f"{name} must carry a UTC offset")
    return moment.astimezone(UTC)


def signal_value(raw: object) -> Decimal:
    """A normalised signal value in [-1, 1], kept to 5 places (the RegD files' precision); RegulationError if not.

    The one parser of signal values: storage here and the dispatch edges (``vpp.dispatch.services``) alike.
    """
    try:
        number = Decimal(str(raw)).quantize(SIGNAL_PLACES, rounding=ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError) as exc:
        raise RegulationError(f"signal value {raw!r} is not a number") from exc
    if not number.is_finite() or not Decimal(-1) <= number <= Decimal(1):
        raise RegulationError(f"signal value {raw} is outside the normalised range [-1, 1]")
    return number


# --- signal and basepoint intake ---------------------------------------------------------------------------------


def reserve_deployment_record(
    *,
    portfolio: str,
    event_id: str,
    power_w: int | None,
    start: datetime,
    end: datetime,
    source: str,
    received_by_id: int | None = None,
    product: Product | None = None,
    offset_only: bool = False,
    baseline_at: datetime | None = None,
) -> tuple[ReserveDeployment, bool]:
    """Store one reserve event called on ``portfolio``; returns ``(row, created)``.

    ``product``: the reserve product deployed; when not given, the one reserve product the portfolio holds an award
    of at ``start`` (none: the event is an offset on regulation only, neither measured nor settled). ``power_w``:
    the reserve asked for; when not given, all of the product's award in force at ``start`` (PJM deploys every
    cleared MW in an event). ``offset_only``: no product is looked for (a utility's DR event on a regulation
    portfolio is not a deployment of its reserve award, so neither measured nor settled as one). ``baseline_at``:
    when its dispatch measures the baseline, if not at ``start`` (at or before it: a later part of one event).

    Idempotent on ``(portfolio, event_id)``: the same event again returns the stored row with ``created=False``,
    a different one under the same reference raises :class:`ReserveConflict`.
    """
    start, end = utc_instant(start, "start"), utc_instant(end, "end")
    if end <= start:
        raise RegulationError("a reserve deployment ends after it starts")
    if end - start > RESERVE_MAX:
        raise RegulationError(f"a reserve deployment lasts at most {RESERVE_MAX}")
    if baseline_at is not None and utc_instant(baseline_at, "baseline_at") > start:
        raise RegulationError("a reserve deployment's baseline is measured at or before its start")
    if product is not None and product.kind != Product.Kind.RESERVE:
        raise RegulationError(f"{product} is not a reserve product")
    if product is None and not offset_only:
        product = _reserve_held(portfolio, start)
    if power_w is None:
        power_w = _reserve_awarded_w(product, portfolio, start)
    if power_w <= 0:
        raise RegulationError("a reserve deployment asks for a positive power (W of discharge)")
    fields = {"power_w": power_w, "start": start, "end": end}
    try:
        with transaction.atomic():
            row = ReserveDeployment.objects.create(
                portfolio=portfolio,
                event_id=event_id,
                product=product,
                source=source,
                belief_time=timezone.now(),
                received_by_id=received_by_id,
                baseline_at=baseline_at,
                **fields,
            )
        return row, True
    except IntegrityError:
        existing = ReserveDeployment.objects.get(portfolio=portfolio, event_id=event_id)
        if any(getattr(existing, name) != value for name, value in fields.items()):
            raise ReserveConflict(
                f"reserve event {event_id!r} of {portfolio!r} is already stored as {existing}; refusing a different one"
            ) from None
        return existing, False


def reserve_deployment_end(*, deployment_id: int, at: datetime, reason: str) -> ReserveDeployment | None:
    """End a stored event early (its sender cancelled or replaced it): its end moves to ``at``, never later than it
    was nor before its start. Regulation dispatch stops adding it at its next state reload and its reserve run
    clears its setpoints at its next pass (``vpp.dispatch.reserve_intake.reserve_dispatch_end`` wakes it at once).
    Idempotent; None for an unknown event. The change is logged with ``reason``; the row keeps the new end."""
    at = utc_instant(at, "at")
    with transaction.atomic():
        row = ReserveDeployment.objects.select_for_update().filter(pk=deployment_id).first()
        if row is None:
            return None
        end = min(max(at, row.start + timedelta(seconds=1)), row.end)  # the rows' constraint: end > start
        if end < row.end:
            LOG.info("reserve event %s of %s ends early at %s (was %s): %s", row.event_id, row.portfolio,
                     end.isoformat(), row.end.isoformat(), reason)  # fmt: skip
            row.end = end
            row.save(update_fields=["end"])
    return row


def _reserve_held(portfolio: str, at: datetime) -> Product | None:
    """The reserve product ``portfolio`` holds an award of at ``at``, if exactly one."""
    ids = set(
        Award.objects.filter(
            product__kind=Product.Kind.RESERVE,
            portfolio=portfolio,
            interval_start__lte=at,
            interval_end__gt=at,
            awarded_w__gt=0,
        ).values_list("product_id", flat=True)
    )
    return Product.objects.select_related("operator").get(pk=ids.pop()) if len(ids) == 1 else None


def _reserve_awarded_w(product: Product | None, portfolio: str, at: datetime) -> int:
    if product is None:
        raise RegulationError(
            f"give power_w: portfolio {portfolio!r} holds no reserve award at {at.isoformat()} to deploy"
        )
    total = Award.objects.filter(
        product=product, portfolio=portfolio, interval_start__lte=at, interval_end__gt=at
    ).aggregate(total=Sum("awarded_w"))["total"]
    if not total:
        raise RegulationError(f"portfolio {portfolio!r} holds no award of {product} at {at.isoformat()}")
    return int(total)


def regulation_signal_record(
    *,
    product: Product,
    portfolio: str,
    at: datetime,
    value: Decimal | float | str,
    source: str,
    source_ref: str = "",
    received_by_id: int | None = None,
    belief_time: datetime | None = None,
) -> tuple[RegulationSignal, bool]:
    """Store one signal value; returns ``(row, created)``.

    Idempotent: the same value for the same instant returns the stored row with ``created=False``; a different
    value raises :class:`SignalConflict`. The value is kept to 5 decimal places (the RegD files' precision).
    """
    if product.kind != Product.Kind.REGULATION:
        raise RegulationError(f"{product} is not a regulation product")
    at = utc_instant(at, "at")
    number = signal_value(value)
    try:
        with transaction.atomic():
            row = RegulationSignal.objects.create(
                product=product,
                portfolio=portfolio,
                at=at,
                value=number,
                source=source,
                source_ref=source_ref,
                belief_time=belief_time or timezone.now(),
                received_by_id=received_by_id,
            )
        return row, True
    except IntegrityError:
        existing = RegulationSignal.objects.get(product=product, portfolio=portfolio, at=at)
        if existing.value != number:
            raise SignalConflict(
                f"the signal at {at.isoformat()} is already {existing.value} (from {existing.source}); "
                f"refusing {number}"
            ) from None
        return existing, False


def regulation_signal_import(
    *, product: Product, portfolio: str, trace: SignalTrace, start: datetime, source_ref: str = ""
) -> int:
    """Store a whole signal file from ``start`` on (file replay); instants already stored are left as they are.

    Returns the number of rows created.
    """
    start = utc_instant(start, "start")
    now = timezone.now()
    rows = [
        RegulationSignal(
            product=product,
            portfolio=portfolio,
            at=start + timedelta(seconds=int(offset)),
            value=signal_value(float(value)),
            source=SignalSource.FILE,
            source_ref=source_ref or trace.name,
            belief_time=now,
        )
        for offset, value in zip(trace.offsets_s, trace.values, strict=True)
    ]
    before = RegulationSignal.objects.filter(product=product, portfolio=portfolio).count()
    RegulationSignal.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)
    return RegulationSignal.objects.filter(product=product, portfolio=portfolio).count() - before


def regulation_basepoint_record(
    *, product: Product, portfolio: str, at: datetime, basepoint_w: int, source: str = "dispatch"
) -> RegulationBasepoint:
    """Record the fleet basepoint (W, + charging) dispatch regulates around from ``at`` on (last write wins)."""
    row, _ = RegulationBasepoint.objects.update_or_create(
        product=product,
        portfolio=portfolio,
        at=utc_instant(at, "at"),
        defaults={"basepoint_w": int(basepoint_w), "source": source, "belief_time": timezone.now()},
    )
    return row


def regulation_price_record(
    *,
    product: Product,
    interval_start: datetime,
    performance_price: Decimal,
    mileage_ratio: Decimal,
    capacity_price: Decimal | None = None,
    source: str = "operator",
    source_ref: str = "",
    belief_time: datetime | None = None,
) -> RegulationPrice:
    """Record a belief about an hour's RMPCP, mileage ratio and (optionally) RMCCP."""
    return RegulationPrice.objects.create(
        product=product,
        interval_start=utc_instant(interval_start, "interval_start"),
        capacity_price=capacity_price,
        performance_price=performance_price,
        mileage_ratio=mileage_ratio,
        source=source,
        source_ref=source_ref,
        belief_time=belief_time or timezone.now(),
    )


def energy_price_record(
    *,
    operator_id: int,
    interval_start: datetime,
    interval_minutes: int,
    price: Decimal,
    location: str = "",
    source: str = "operator",
    source_ref: str = "",
    belief_time: datetime | None = None,
) -> EnergyPrice:
    """Record a belief about an interval's energy price ($/MWh)."""
    return EnergyPrice.objects.create(
        operator_id=operator_id,
        location=location,
        interval_start=utc_instant(interval_start, "interval_start"),
        interval_minutes=interval_minutes,
        price=price,
        source=source,
        source_ref=source_ref,
        belief_time=belief_time or timezone.now(),
    )
