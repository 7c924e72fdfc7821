"""The bid lifecycle. Every bid change goes through :func:`bid_transition` or :func:`bid_edit`: one conditional
``UPDATE ... WHERE status = <expected> [AND version = <seen>]`` whose row count says whether it happened (no
check-then-act), and one ``BidEvent`` audit row (:func:`bid_event_record`) in the same transaction.

Lifecycle::

    draft -> approved -> submitted -> awarded | partially_awarded | rejected
    awarded | partially_awarded -> delivered -> settled        (approved -> draft: sent back for changes)

Also the errors every bidding service raises (``MarketError``, ``StaleBid``, ``CsvImportError``), who acts
(``Actor``), quantity and price validation, and the day-ahead gate closure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from markets.models import Bid, BidEvent, MarketOperator

S = Bid.Status

TRANSITIONS: dict[str, set[str]] = {
    S.DRAFT: {S.APPROVED},
    S.APPROVED: {S.SUBMITTED, S.DRAFT},
    S.SUBMITTED: {S.AWARDED, S.PARTIALLY_AWARDED, S.REJECTED},
    S.AWARDED: {S.DELIVERED},
    S.PARTIALLY_AWARDED: {S.DELIVERED},
    S.DELIVERED: {S.SETTLED},
    S.REJECTED: set(),
    S.SETTLED: set(),
}
EDITABLE = (S.DRAFT, S.APPROVED)


class MarketError(Exception):
    """A market operation refused, with a reason fit for the user (HTTP 400/409)."""


class StaleBid(MarketError):
    """The bid changed since it was read (status or version): reload and retry."""


class CsvImportError(MarketError):
    """An imported file refused, naming the line at fault; nothing of it was stored."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a user, or an automated component (``system:<name>``)."""

    user: User | None = None
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (self.user.get_username() if self.user is not None else "system")


#: What the services accept as "who": an Actor, a signed-in user, or None for the system.
ActorLike = Actor | User | None


def _actor(actor: ActorLike) -> Actor:
    if actor is None:
        return Actor(label="system")
    if isinstance(actor, Actor):
        return actor
    return Actor(user=actor)


def bid_event_record(
    bid_id: int, actor: Actor, action: str, *, before: str = "", after: str = "", **changes: Any
) -> None:
    """Write one ``BidEvent``: who did ``action`` to the bid, the status before and after, and what changed."""
    BidEvent.objects.create(
        bid_id=bid_id,
        at=timezone.now(),
        actor=actor.user if actor.user is not None and actor.user.pk else None,
        actor_label=actor.name,
        action=action,
        from_status=before,
        to_status=after,
        changes={k: str(v) for k, v in changes.items() if k != "note"},
        note=str(changes.get("note", ""))[:500],
    )


# --- Lifecycle -----------------------------------------------------------------------------------------------------


def bid_transition(*, bid_id: int, to_status: str, actor: ActorLike, note: str = "", version: int | None = None) -> Bid:
    """Move one bid to ``to_status`` if the lifecycle allows it from its current status; atomic and audited.

    ``version``: the version the caller saw (pages pass it so a stale click is refused). Raises ``StaleBid`` when
    someone else changed the bid first, ``MarketError`` when the transition is not allowed.
    """
    who = _actor(actor)
    sources = [s for s, targets in TRANSITIONS.items() if to_status in targets]
    if not sources:
        raise MarketError(f"no transition leads to {to_status!r}")
    with transaction.atomic():
        current = Bid.objects.filter(pk=bid_id).values_list("status", "version").first()
        if current is None:
            raise MarketError(f"bid {bid_id} does not exist")
        status, seen = current
        if status not in sources:
            raise MarketError(f"bid {bid_id} is {status}; it cannot become {to_status}")
        if to_status == S.SUBMITTED:
            _check_gate_open(bid_id)
        query = Bid.objects.filter(pk=bid_id, status=status, version=seen if version is None else version)
        if query.update(status=to_status, version=F("version") + 1, updated_at=timezone.now()) != 1:
            raise StaleBid(f"bid {bid_id} changed meanwhile; reload it")
        bid_event_record(bid_id, who, "transition", before=status, after=to_status, note=note)
    return Bid.objects.get(pk=bid_id)


def bid_edit(
    *,
    bid_id: int,
    quantity_w: int,
    price: Decimal,
    version: int,
    actor: ActorLike,
    note: str = "",
) -> Bid:
    """Change a draft or approved bid's quantity and price (an approved bid goes back to draft); audited.

    Refuses quantities that break the operator's minimum size or increment (0 withdraws the bid), negative prices,
    and edits made on a stale version.
    """
    who = _actor(actor)
    bid = Bid.objects.select_related("product__operator").get(pk=bid_id)
    validate_quantity(bid.product.operator, quantity_w)
    price = validate_price(bid.product.operator, price)
    with transaction.atomic():
        before = Bid.objects.filter(pk=bid_id).values("status", "quantity_w", "price").first()
        assert before is not None
        updated = Bid.objects.filter(pk=bid_id, status__in=EDITABLE, version=version).update(
            quantity_w=quantity_w, price=price, status=S.DRAFT, version=F("version") + 1, updated_at=timezone.now()
        )
        if updated != 1:
            if before["status"] not in EDITABLE:
                raise MarketError(f"bid {bid_id} is {before['status']}; only draft or approved bids can be edited")
            raise StaleBid(f"bid {bid_id} changed meanwhile; reload it")
        bid_event_record(
            bid_id,
            who,
            "edit",
            before=before["status"],
            after=S.DRAFT,
            quantity_w=f"{before['quantity_w']} -> {quantity_w}",
            price=f"{before['price']} -> {price}",
            note=note,
        )
    return Bid.objects.get(pk=bid_id)


def bids_transition(*, bid_ids: Iterable[int], to_status: str, actor: ActorLike) -> list[str]:
    """Apply :func:`bid_transition` to several bids; returns the refusals (the others went through)."""
    refused = []
    for bid_id in bid_ids:
        try:
            bid_transition(bid_id=bid_id, to_status=to_status, actor=actor)
        except MarketError as exc:
            refused.append(str(exc))
    return refused


def validate_quantity(operator: MarketOperator, quantity_w: int) -> None:
    if quantity_w < 0:
        raise MarketError("quantity must be >= 0")
    if quantity_w == 0:
        return
    if quantity_w < operator.min_bid_w:
        raise MarketError(f"{quantity_w} W is below {operator.code}'s minimum bid of {operator.min_bid_w} W")
    if quantity_w % operator.bid_increment_w:
        raise MarketError(
            f"{quantity_w} W is not a multiple of {operator.code}'s increment {operator.bid_increment_w} W"
        )


def validate_price(operator: MarketOperator, price: Decimal) -> Decimal:
    if price < 0:
        raise MarketError("price must be >= 0")
    tick = operator.price_tick
    return (price / tick).to_integral_value(rounding=ROUND_CEILING) * tick


def gate_closure(operator: MarketOperator, delivery_start: datetime) -> datetime:
    """Day-ahead gate closure for a delivery starting at ``delivery_start``: ``gate_closure_local`` on the day
    before the delivery day, in the operator's zone."""
    tz = ZoneInfo(operator.timezone)
    day = delivery_start.astimezone(tz).date()
    return datetime.combine(day - timedelta(days=1), operator.gate_closure_local, tzinfo=tz).astimezone(UTC)


def _check_gate_open(bid_id: int) -> None:
    bid = Bid.objects.select_related("product__operator").get(pk=bid_id)
    operator = bid.product.operator
    closes = min(
        gate_closure(operator, bid.interval_start),
        bid.interval_start - timedelta(minutes=operator.intraday_gate_minutes),
    )
    closes = max(closes, bid.interval_start - timedelta(minutes=operator.intraday_gate_minutes))
    if timezone.now() >= closes:
        raise MarketError(f"gate closed at {closes:%Y-%m-%d %H:%M} UTC for bid {bid.external_ref}")
