"""Bid lifecycle and audit: transitions the lifecycle allows, stale and invalid edits refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from markets.models import Bid, BidEvent
from markets.services.bids import MarketError, StaleBid, bid_edit, bid_transition
from markets.services.clearing import award_record

S = Bid.Status


def test_a_bid_goes_through_its_lifecycle_and_every_change_is_audited(bid_factory, bidding_admin) -> None:
    bid = bid_factory()
    for to in (S.APPROVED, S.SUBMITTED):
        bid_transition(bid_id=bid.id, to_status=to, actor=bidding_admin)
    award_record(
        bid_id=bid.id, awarded_w=300_000, clearing_price=Decimal("12"), source="csv", source_ref="t", actor=None
    )
    bid_transition(bid_id=bid.id, to_status=S.DELIVERED, actor=None)
    bid_transition(bid_id=bid.id, to_status=S.SETTLED, actor=None)
    events = list(BidEvent.objects.filter(bid=bid).values_list("from_status", "to_status", "actor_label"))
    assert events == [
        (S.DRAFT, S.APPROVED, "bidder"),
        (S.APPROVED, S.SUBMITTED, "bidder"),
        (S.SUBMITTED, S.PARTIALLY_AWARDED, "system"),
        (S.PARTIALLY_AWARDED, S.DELIVERED, "system"),
        (S.DELIVERED, S.SETTLED, "system"),
    ]
    assert Bid.objects.get(pk=bid.id).version == 6


def test_it_refuses_transitions_the_lifecycle_does_not_allow(bid_factory) -> None:
    bid = bid_factory()
    with pytest.raises(MarketError, match="cannot become submitted"):
        bid_transition(bid_id=bid.id, to_status=S.SUBMITTED, actor=None)
    with pytest.raises(MarketError):
        bid_transition(bid_id=bid.id, to_status=S.SETTLED, actor=None)
    assert Bid.objects.get(pk=bid.id).status == S.DRAFT
    assert not BidEvent.objects.filter(bid=bid).exists()


def test_a_stale_edit_is_refused_and_changes_nothing(bid_factory, bidding_admin) -> None:
    bid = bid_factory()
    bid_edit(bid_id=bid.id, quantity_w=700_000, price=Decimal("11"), version=1, actor=bidding_admin)
    with pytest.raises(StaleBid):
        bid_edit(bid_id=bid.id, quantity_w=900_000, price=Decimal("11"), version=1, actor=bidding_admin)
    bid.refresh_from_db()
    assert (bid.quantity_w, bid.version) == (700_000, 2)
    assert BidEvent.objects.get(bid=bid).changes["quantity_w"] == "500000 -> 700000"


@pytest.mark.parametrize(("quantity", "reason"), [(50_000, "below"), (250_000, "multiple"), (-1, ">= 0")])
def test_edits_must_respect_minimum_size_and_increment(bid_factory, quantity, reason) -> None:
    bid = bid_factory()
    with pytest.raises(MarketError, match=reason):
        bid_edit(bid_id=bid.id, quantity_w=quantity, price=Decimal(1), version=1, actor=None)


def test_editing_an_approved_bid_sends_it_back_to_draft(bid_factory) -> None:
    bid = bid_factory()
    bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
    edited = bid_edit(bid_id=bid.id, quantity_w=200_000, price=Decimal("9.999"), version=2, actor=None)
    assert edited.status == S.DRAFT
    assert edited.price == Decimal("10.00")  # rounded up to the operator's 0.01 tick
