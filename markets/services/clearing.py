"""The market's answer to submitted bids: :func:`award_record` records one award and moves its bid on;
:func:`market_clear_simulated` plays a pay-as-clear operator against the price curve."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from markets.models import Award, Bid, MarketOperator
from markets.selectors import latest_prices
from markets.services.bids import Actor, ActorLike, MarketError, bid_transition

S = Bid.Status


def market_clear_simulated(
    *,
    operator: MarketOperator,
    start: datetime,
    end: datetime,
    clearing_prices: dict[tuple[str, datetime], Decimal] | None = None,
    requirement_w: dict[tuple[str, datetime], int] | None = None,
) -> dict[str, int]:
    """Clear every submitted bid of ``operator`` in [start, end) like a pay-as-clear market would.

    Clearing price per (product code, interval start): ``clearing_prices`` or else the newest price belief for the
    interval. A bid priced at or under it is accepted; the market takes at most ``requirement_w`` per product and
    interval (cheapest offers first), so a bid can be partially awarded. Others are rejected. Each bid gets one
    ``Award`` (0 W when rejected) and its transition, in one transaction per bid.
    """
    who = Actor(label=f"system:simulated-{operator.code}")
    counts: dict[str, int] = {S.AWARDED: 0, S.PARTIALLY_AWARDED: 0, S.REJECTED: 0}
    bids = list(
        Bid.objects.filter(
            product__operator=operator, status=S.SUBMITTED, interval_start__gte=start, interval_start__lt=end
        )
        .select_related("product")
        .order_by("interval_start", "price", "id")
    )
    remaining: dict[tuple[str, datetime], int] = dict(requirement_w or {})
    now = timezone.now()
    for bid in bids:
        key = (bid.product.code, bid.interval_start)
        price = (clearing_prices or {}).get(key)
        if price is None:
            known = latest_prices(product=bid.product, start=bid.interval_start, end=bid.interval_end, known_at=now)
            price = known.get(bid.interval_start)
        if price is None or bid.price > price:
            awarded = 0
        else:
            awarded = min(bid.quantity_w, remaining.get(key, bid.quantity_w))
            awarded -= awarded % bid.product.operator.bid_increment_w
            if key in remaining:
                remaining[key] -= awarded
        status = award_record(
            bid_id=bid.id,
            awarded_w=awarded,
            clearing_price=price if price is not None else Decimal(0),
            source=Award.Source.SIMULATED,
            source_ref=f"simulated {operator.code}",
            actor=who,
        )
        counts[status] += 1
    return {str(k): v for k, v in counts.items()}


def award_record(
    *,
    bid_id: int,
    awarded_w: int,
    clearing_price: Decimal,
    source: str,
    source_ref: str,
    actor: ActorLike,
) -> str:
    """Record the market's answer for one submitted bid and move it to awarded / partially awarded / rejected."""
    with transaction.atomic():
        bid = Bid.objects.select_for_update().get(pk=bid_id)
        if awarded_w < 0 or awarded_w > bid.quantity_w:
            raise MarketError(f"bid {bid.external_ref}: award {awarded_w} W outside 0..{bid.quantity_w} W")
        status = S.REJECTED if awarded_w == 0 else (S.AWARDED if awarded_w == bid.quantity_w else S.PARTIALLY_AWARDED)
        try:
            with transaction.atomic():
                Award.objects.create(
                    bid=bid,
                    product_id=bid.product_id,
                    portfolio=bid.portfolio,
                    interval_start=bid.interval_start,
                    interval_end=bid.interval_end,
                    awarded_w=awarded_w,
                    clearing_price=clearing_price,
                    source=source,
                    source_ref=source_ref,
                    received_at=timezone.now(),
                )
        except IntegrityError:
            raise MarketError(f"bid {bid.external_ref} already has an award") from None
        bid_transition(
            bid_id=bid_id, to_status=status, actor=actor, note=f"{awarded_w} W at {clearing_price} ({source_ref})"
        )
    return status
