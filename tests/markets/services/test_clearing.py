"""The simulated market operator clears submitted bids against its price curve."""

from __future__ import annotations

from decimal import Decimal

from markets.models import Award, Bid
from markets.services.bids import bid_transition
from markets.services.clearing import market_clear_simulated

S = Bid.Status


def test_the_simulated_operator_clears_against_its_price_curve(bid_factory) -> None:
    cheap, dear, capped = bid_factory(price=Decimal(5)), bid_factory(price=Decimal(50)), bid_factory(price=Decimal(1))
    for bid in (cheap, dear, capped):
        bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
        bid_transition(bid_id=bid.id, to_status=S.SUBMITTED, actor=None)
    prices = {("reg-d", b.interval_start): Decimal(20) for b in (cheap, dear, capped)}
    counts = market_clear_simulated(
        operator=cheap.product.operator,
        start=cheap.interval_start,
        end=capped.interval_end,
        clearing_prices=prices,
        requirement_w={("reg-d", capped.interval_start): 200_000},
    )
    assert counts == {"awarded": 1, "partially_awarded": 1, "rejected": 1}
    assert Award.objects.get(bid=capped).awarded_w == 200_000
    assert Award.objects.get(bid=dear).awarded_w == 0
