from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from markets.models import Bid, Product


class BidFactory(factory.django.DjangoModelFactory[Bid]):
    class Meta:
        model = Bid

    product = factory.LazyFunction(lambda: Product.objects.get(operator__code="pjm", code="reg-d"))
    interval_start = factory.Sequence(
        lambda n: (timezone.now() + timedelta(days=2)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=n)
    )
    interval_end = factory.LazyAttribute(lambda o: o.interval_start + timedelta(hours=1))
    quantity_w = 500_000
    price = Decimal("10.00")
    external_ref = factory.Sequence(lambda n: f"BTEST{n:06d}")


@pytest.fixture
def bid_factory(db: None) -> type[BidFactory]:
    return BidFactory


@pytest.fixture
def bidding_admin(db: None) -> User:
    user = User.objects.create_user("bidder", password="pw-bidder-123")
    user.groups.add(Group.objects.get(name="bidding admin"))
    return user


@pytest.fixture
def plain_user(db: None) -> User:
    return User.objects.create_user("viewer", password="pw-viewer-123")
