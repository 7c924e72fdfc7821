"""The dispatcher's state as read from the database: reserve events and awards in force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from markets.regulation.services import reserve_deployment_record
from tests.markets.regulation.data import regulation_product
from tests.vpp.stand_ins import award
from vpp.dispatch.selectors import awarded_capacity, dispatch_state_load

pytestmark = pytest.mark.django_db


def test_the_state_carries_the_reserve_events_in_force_and_only_those():
    # Given two events in force on the portfolio, one ended, one still to come and one on another portfolio
    now = timezone.now()
    minute = timedelta(minutes=1)
    for event_id, power_w, start, end, portfolio in (
        ("a", 20_000, now - minute, now + 5 * minute, "default"),
        ("b", 15_000, now - 2 * minute, now + 2 * minute, "default"),
        ("ended", 99_000, now - 10 * minute, now - minute, "default"),
        ("later", 99_000, now + minute, now + 9 * minute, "default"),
        ("elsewhere", 99_000, now - minute, now + minute, "fleet-7"),
    ):
        reserve_deployment_record(
            portfolio=portfolio, event_id=event_id, power_w=power_w, start=start, end=end, source="utility_api"
        )
    # When the dispatcher loads its state now
    state = dispatch_state_load(product_id=1, portfolio="default", now=now.timestamp())
    # Then the reserve is the sum of the two in force, until the first of them ends
    assert state.reserve_w == 35_000
    assert state.reserve_until == pytest.approx((now + 2 * minute).timestamp())


def test_overlapping_awards_add_up_until_the_first_of_them_ends():
    # Given 100 kW of RegD awarded to "default" for 14:00-15:00 and 50 kW for a block of 13:00-16:00 (overlapping)
    product = regulation_product()
    start = datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    award(product, "default", start, start + timedelta(hours=1), 100_000)
    award(product, "default", start - timedelta(hours=1), start + timedelta(hours=2), 50_000)
    # When the capacity is read at 14:30 and at 15:30
    at_1430 = awarded_capacity(product_id=product.pk, portfolio="default", at=start + timedelta(minutes=30))
    at_1530 = awarded_capacity(product_id=product.pk, portfolio="default", at=start + timedelta(minutes=90))
    # Then 14:30 has both (150 kW), holding only until 15:00, when the first ends; 15:30 has the second alone
    assert at_1430 == (150_000, (start + timedelta(hours=1)).timestamp())
    assert at_1530 == (50_000, (start + timedelta(hours=2)).timestamp())
