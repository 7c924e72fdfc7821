"""PJM's retroactive synchronized reserve shortfall penalty, computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from markets.reserve.penalty import ClearedInterval, lookback, retroactive_penalty

EVENT = datetime(2017, 7, 1, 21, 5, tzinfo=UTC)
H = timedelta(hours=1)


def _hour(ref: int, start: datetime, cleared_w: int, price: str) -> ClearedInterval:
    return ClearedInterval(ref, start, start + H, cleared_w, D(price))


def test_the_shortfall_is_charged_at_each_cleared_hours_srmcp_over_the_lookback():
    # Given 100 kW cleared 14:00-15:00 at $3.59 and 21:00-22:00 at $14.95 (PJM, 1 July 2017), and one hour cleared
    # four days earlier (outside a 3-day look-back)
    cleared = [
        _hour(1, datetime(2017, 7, 1, 14, tzinfo=UTC), 100_000, "3.59"),
        _hour(2, datetime(2017, 7, 1, 21, tzinfo=UTC), 100_000, "14.95"),
        _hour(3, datetime(2017, 6, 27, 14, tzinfo=UTC), 100_000, "99.00"),
    ]
    # When an event at 21:05 falls 20 kW short
    total, hours = retroactive_penalty(shortfall_w=20_000, event_start=EVENT, window=timedelta(days=3), cleared=cleared)
    # Then 0.02 MW x 1 h x 3.59 + 0.02 MW x 1 h x 14.95 = 0.0718 + 0.299 = 0.3708
    assert total == D("0.3708")
    assert [h.ref for h in hours] == [1, 2]


def test_the_penalty_never_exceeds_what_an_hour_cleared_and_two_awards_of_one_hour_share_it():
    # Given 30 kW and 50 kW cleared for the same hour at $10, and 40 kW the hour before
    start = datetime(2017, 7, 1, 21, tzinfo=UTC)
    cleared = [_hour(1, start, 30_000, "10"), _hour(2, start, 50_000, "10"), _hour(3, start - H, 40_000, "10")]
    # When the event falls 60 kW short
    total, hours = retroactive_penalty(shortfall_w=60_000, event_start=EVENT, window=timedelta(days=1), cleared=cleared)
    # Then the hour before pays 40 kW (all it cleared), the event hour 60 kW (30 + 30 of the 50): 0.04x10 + 0.06x10
    assert [(h.ref, h.penalised_w) for h in hours] == [(3, 40_000), (1, 30_000), (2, 30_000)]
    assert total == D("1.00")


def test_an_hour_partly_inside_the_lookback_is_charged_for_that_part():
    cleared = [_hour(1, datetime(2017, 7, 1, 19, tzinfo=UTC), 100_000, "12")]
    # A look-back of 1 h 35 min from 21:05 starts at 19:30: half of the 19:00 hour
    total, _ = retroactive_penalty(
        shortfall_w=100_000, event_start=EVENT, window=timedelta(hours=1, minutes=35), cleared=cleared
    )
    assert total == D("0.1") * D("0.5") * D("12")


def test_no_shortfall_no_penalty():
    cleared = [_hour(1, datetime(2017, 7, 1, 21, tzinfo=UTC), 100_000, "14.95")]
    assert retroactive_penalty(shortfall_w=0, event_start=EVENT, window=timedelta(days=3), cleared=cleared) == (0, [])


def test_the_lookback_is_the_lesser_of_the_average_days_between_events_and_the_time_since_the_last_shortfall():
    assert lookback(average_days_between_events=D(3), since_last_shortfall=None) == timedelta(days=3)
    assert lookback(average_days_between_events=D(3), since_last_shortfall=timedelta(hours=30)) == timedelta(hours=30)
    assert lookback(average_days_between_events=D("2.5"), since_last_shortfall=timedelta(days=9)) == timedelta(hours=60)


def test_it_refuses_a_negative_shortfall():
    with pytest.raises(ValueError):
        retroactive_penalty(shortfall_w=-1, event_start=EVENT, window=H, cleared=[])
