"""The dispatcher's state as read from the database: reserve events in force."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from markets.regulation.services import reserve_deployment_record
from vpp.dispatch.selectors import dispatch_state_load

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
