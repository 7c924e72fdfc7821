"""The hourly settlement task: due hour, idempotence, missing inputs retried later."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from markets.regulation.models import Settlement
from markets.regulation.services import energy_price_record, regulation_price_record
from markets.regulation.tasks import hour_due, regulation_settle_hour
from tests.markets.regulation.data import (
    HOUR_START,
    award_for,
    regulation_product,
    stations,
    store_following,
    store_signal,
)


def test_an_hour_is_due_once_its_scoring_look_ahead_and_a_margin_have_passed():
    # the 14:00 hour needs rows to 15:05:10 (31 look-ahead rows) and a 2-min margin for late meter values
    assert hour_due(datetime(2025, 7, 1, 15, 7, 9, tzinfo=UTC)) == datetime(2025, 7, 1, 13, tzinfo=UTC)
    assert hour_due(datetime(2025, 7, 1, 15, 7, 10, tzinfo=UTC)) == datetime(2025, 7, 1, 14, tzinfo=UTC)


@pytest.mark.django_db
def test_the_task_settles_each_award_once_and_retries_when_inputs_are_missing():
    product = regulation_product()
    award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00")
    store_signal(product, HOUR_START)
    store_following(stations(1), HOUR_START, capacity_w=1_000_000)
    # prices not known yet: nothing settled, nothing stored
    assert regulation_settle_hour(HOUR_START.isoformat()) == {"settled": 0, "failed": 1}
    assert not Settlement.objects.exists()
    regulation_price_record(
        product=product, interval_start=HOUR_START, performance_price=Decimal("2.50"), mileage_ratio=Decimal("3.2")
    )
    energy_price_record(
        operator_id=product.operator_id, interval_start=HOUR_START, interval_minutes=60, price=Decimal("30")
    )
    assert regulation_settle_hour(HOUR_START.isoformat()) == {"settled": 1, "failed": 0}
    assert regulation_settle_hour(HOUR_START.isoformat()) == {"settled": 1, "failed": 0}
    assert Settlement.objects.count() == 1
    assert Settlement.objects.get().net == Decimal("6.16") + Decimal("6.16")
