"""Settlement periods: PJM-style products settle per hour; a product with a shorter settlement period (the demo
operator's quarter-hour) is scored per period with PJM's method and paid pro rata; a late award's first period
runs from its own start; an unsettleable period is reported once, not on every run."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest

from markets.regulation import tasks
from markets.regulation.models import PerformanceScoreRecord, Settlement
from markets.regulation.services import energy_price_record, regulation_price_record
from markets.regulation.settling import settlement_compute, settlement_periods
from markets.regulation.tasks import SETTLE_AFTER, regulation_settle_hour
from tests.markets.regulation.data import (
    HOUR_START,
    award_for,
    regulation_product,
    stations,
    store_following,
    store_signal,
)

pytestmark = pytest.mark.django_db
Q = timedelta(minutes=15)


def _prices(product, hours: int = 1) -> None:
    for k in range(hours):
        start = HOUR_START + timedelta(hours=k)
        regulation_price_record(
            product=product, interval_start=start, performance_price=Decimal("2.50"), mileage_ratio=Decimal("3.2")
        )
        energy_price_record(
            operator_id=product.operator_id, interval_start=start, interval_minutes=60, price=Decimal("30")
        )


def _late(award, start):
    """The award taken late: from ``start`` within its hour (as the demo market takes the hour under way)."""
    award.interval_start = start
    award.save(update_fields=["interval_start"])
    award.bid.interval_start = start
    award.bid.save(update_fields=["interval_start"])
    return award


def test_a_pjm_product_settles_per_hour_and_a_quarter_hour_product_per_quarter():
    # Given PJM's RegD (hourly, as shipped) and a three-hour award
    product = regulation_product()
    award = award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00", hours=3)
    # Then its settlement periods are its three hours
    assert settlement_periods(award) == [
        (HOUR_START + timedelta(hours=k), HOUR_START + timedelta(hours=k + 1)) for k in range(3)
    ]
    # When the product settles per 15 minutes instead
    product.settlement_minutes = 15
    product.save(update_fields=["settlement_minutes"])
    award.refresh_from_db()
    # Then the same award has twelve quarter-hours
    periods = settlement_periods(award)
    assert len(periods) == 12
    assert all(end - start == Q for start, end in periods)


def test_a_late_awards_first_period_runs_from_its_start_and_a_short_stub_joins_the_next():
    product = regulation_product()
    product.settlement_minutes = 15
    product.save(update_fields=["settlement_minutes"])
    award = award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00")
    # Given an award taken 7 min 30 s into its hour: its first period is the 7.5 minutes to the quarter
    _late(award, HOUR_START + timedelta(minutes=7, seconds=30))
    assert settlement_periods(award)[0] == (HOUR_START + timedelta(minutes=7, seconds=30), HOUR_START + Q)
    assert len(settlement_periods(award)) == 4
    # Given one taken 11 minutes in: 4 minutes is under PJM's minimum (30 scored rows), so it joins the next quarter
    _late(award, HOUR_START + timedelta(minutes=11))
    assert settlement_periods(award)[0] == (HOUR_START + timedelta(minutes=11), HOUR_START + 2 * Q)
    assert len(settlement_periods(award)) == 3


def test_a_quarter_hour_is_scored_on_its_own_rows_and_paid_a_quarter_of_the_hour():
    # Given a quarter-hour product, an award, prices, the signal and a fleet following it exactly
    product = regulation_product()
    product.settlement_minutes = 15
    product.save(update_fields=["settlement_minutes"])
    award = award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00")
    _prices(product)
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=1_000_000)
    # When its second quarter is settled
    settlement = settlement_compute(award=award, period_start=HOUR_START + Q)
    # Then it covers that quarter only, scored with PJM's method on its 90 rows + 31 look-ahead rows
    assert (settlement.period_start, settlement.period_end) == (HOUR_START + Q, HOUR_START + 2 * Q)
    assert settlement.score is not None
    assert settlement.score.kind == PerformanceScoreRecord.Kind.INTERVAL
    assert settlement.score.rows == 90 + 31
    assert settlement.score.composite > Decimal("0.95")
    # And it is paid a quarter of the hour: 1 MW x 0.25 h x $20 x score, and 1 MW x 0.25 h x 3.2 x $2.50 x score
    score = settlement.score_value
    assert settlement.capacity_credit == (Decimal("5.00") * score).quantize(Decimal("0.01"))
    assert settlement.performance_credit == (Decimal("2.00") * score).quantize(Decimal("0.01"))
    # And the quarter's energy is priced at its hour's price
    assert settlement.exact["energy_prices"] == [[(HOUR_START + Q).isoformat(), "30.0000"]]


def test_a_start_that_is_not_a_period_is_refused():
    product = regulation_product()
    award = award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00", hours=2)
    with pytest.raises(Exception, match="does not start a settlement period"):
        settlement_compute(award=award, period_start=HOUR_START + Q)


def test_the_task_settles_an_hourly_product_per_hour_once_the_hour_is_due():
    # Given PJM's hourly RegD, a two-hour award, its prices, signal and a fleet following it
    product = regulation_product()
    award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00", hours=2)
    _prices(product, hours=2)
    store_signal(product, HOUR_START)
    store_following(stations(1), HOUR_START, capacity_w=1_000_000)
    first_due = HOUR_START + timedelta(hours=1) + SETTLE_AFTER
    # When the task runs a second before the first hour is due: nothing
    assert regulation_settle_hour(now=(first_due - timedelta(seconds=1)).isoformat()) == {"settled": 0, "failed": 0}
    # When it runs once it is due
    assert regulation_settle_hour(now=first_due.isoformat()) == {"settled": 1, "failed": 0}
    # Then the hour is settled as one hourly period, scored on 391 rows
    settlement = Settlement.objects.get()
    assert (settlement.period_start, settlement.period_end) == (HOUR_START, HOUR_START + timedelta(hours=1))
    assert settlement.score is not None
    assert settlement.score.kind == PerformanceScoreRecord.Kind.HOURLY
    assert settlement.score.rows == 391


def test_a_period_that_cannot_be_settled_is_reported_once_not_on_every_run(caplog, monkeypatch):
    monkeypatch.setattr(tasks, "_REPORTED", set())  # this process has reported nothing yet
    # Given a quarter-hour award with prices but no signal at all
    product = regulation_product()
    product.settlement_minutes = 15
    product.save(update_fields=["settlement_minutes"])
    award_for(product, HOUR_START, awarded_w=1_000_000, price="20.00")
    _prices(product)
    due = HOUR_START + Q + SETTLE_AFTER
    # When the task runs three times, a minute apart, while it is due
    with caplog.at_level(logging.WARNING, logger="markets.regulation.tasks"):
        for k in range(3):
            assert regulation_settle_hour(now=(due + timedelta(minutes=k)).isoformat())["failed"] == 1
    # Then it said so once
    assert len([r for r in caplog.records if "not settled" in r.getMessage()]) == 1
    assert not Settlement.objects.exists()
