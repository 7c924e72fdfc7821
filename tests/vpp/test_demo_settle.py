"""The live demo's first settlement: a demo started mid-hour is awarded the rest of the hour from the moment its
offer is taken, regulates on the looped RegD signal, and its first quarter-hour is scored and settled by the
settlement task as soon as that quarter's look-ahead is in -- not after the first full hour."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone

from fleet.models import DeparturePlan, WeeklyDeparture
from fleet.selectors import plugged_in_snapshots
from markets.models import Award
from markets.regulation.models import PerformanceScoreRecord, Settlement
from markets.regulation.settlement import to_cents
from markets.regulation.tasks import SETTLE_AFTER, regulation_settle_hour
from vpp.demo_history import _simulate, regd_signal
from vpp.demo_market import HOUR, demo_portfolios, demo_product, demo_reserve_product, reserve_price
from vpp.management.commands import demo_market as demo_market_command
from vpp.management.commands.demo_market import awards_ensure, portfolios_at


def no_departure_within_the_day() -> None:
    """The demo's cars leave on a weekly schedule: within the coming hour at some times of day, when a car keeps its
    departure need and a fleet holds no reserve. These tests are about the awards and events, not departures."""
    DeparturePlan.objects.all().delete()
    WeeklyDeparture.objects.all().delete()


pytestmark = pytest.mark.django_db
QUARTER = timedelta(minutes=15)


def test_a_demo_started_mid_hour_settles_its_first_quarter_hour_once_its_look_ahead_is_in(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the command's long-running loop drops stale connections; the test's one is the transaction it runs in)
    monkeypatch.setattr(demo_market_command, "close_old_connections", lambda: None)
    # Given the demo seeded (no history), its cars plugged in
    settings.VAR_DIR = tmp_path
    call_command("demo_seed", "--stations", "6", "--id-prefix", "live", "--history-days", "0")
    no_departure_within_the_day()
    product = demo_product()
    hour = (timezone.now() + HOUR).replace(minute=0, second=0, microsecond=0)
    started = hour + timedelta(minutes=7, seconds=23)

    # When the demo's grid operator makes its first round 7 min 23 s into an hour
    awarded = awards_ensure(now=started)

    # Then each demo fleet holds regulation for the rest of that hour from the next 10-s row, not from the top of it
    live = list(Award.objects.filter(product=product, interval_start__lt=hour + HOUR, interval_end__gt=hour))
    assert live
    begins = hour + timedelta(minutes=7, seconds=30)
    assert {(a.interval_start, a.interval_end) for a in live} == {(begins, hour + HOUR)}
    assert all(a.bid.events.filter(note__contains="late").exists() for a in live)
    # And the signal is sent for the award's instants only (the intake refuses the others)
    assert portfolios_at(awarded, started) == []
    assert portfolios_at(awarded, begins) == sorted(a.portfolio for a in live)
    # And each also holds synchronized reserve for the same window (offered first, at the hour's reserve price),
    # the regulation offer sized on what the cars keep once the reserve is held
    reserve = list(
        Award.objects.filter(product=demo_reserve_product(), interval_start__lt=hour + HOUR, interval_end__gt=hour)
    )
    # (a fleet whose cars all leave within the hour holds none: each car keeps its departure need out of it)
    assert {(a.portfolio, a.interval_start, a.interval_end) for a in reserve} <= {
        (a.portfolio, begins, hour + HOUR) for a in live
    }
    assert {a.clearing_price for a in reserve} == {reserve_price(hour)}
    assert portfolios_at(awarded, begins, reserve=True) == sorted(a.portfolio for a in reserve)

    # When dispatch is simulated on the looped RegD signal until the first quarter's look-ahead is in
    fleets = dict(demo_portfolios())
    rng = np.random.default_rng(3)
    for award in live:
        snapshots = plugged_in_snapshots(at=started, fleet_id=fleets[award.portfolio].pk)
        end = hour + QUARTER + SETTLE_AFTER
        _simulate(product, award.portfolio, snapshots, award.interval_start, end, [award], regd_signal(), rng)

    # Then the settlement task settles nothing a second before the first period is due
    due = hour + QUARTER + SETTLE_AFTER
    assert regulation_settle_hour(now=(due - timedelta(seconds=1)).isoformat()) == {"settled": 0, "failed": 0}
    # And settles the first period of every award once it is due: from the award's start to the quarter-hour
    assert regulation_settle_hour(now=due.isoformat()) == {"settled": len(live) + len(reserve), "failed": 0}
    # (the reserve credit to the cent: awarded MW x clearing price x the period's hours; a few kW for 7.5 min may
    # round to nothing)
    for s in Settlement.objects.filter(award__in=reserve).select_related("award"):
        hours = Decimal((s.period_end - s.period_start).total_seconds()) / 3600
        exact = Decimal(s.award.awarded_w) / 1_000_000 * s.award.clearing_price * hours
        assert s.capacity_credit == to_cents(exact), s.award
    settlements = list(Settlement.objects.filter(award__in=live))
    assert {(s.period_start, s.period_end) for s in settlements} == {(begins, hour + QUARTER)}
    for settlement in settlements:
        # scored with PJM's method on the period's 45 rows and 31 look-ahead rows, passing
        assert settlement.score is not None
        assert settlement.score.kind == PerformanceScoreRecord.Kind.INTERVAL
        assert settlement.score.rows == 45 + 31
        assert settlement.score.passed
        # paid for 7.5 minutes of its award, live (not simulated history), every cent attributed to a car
        assert settlement.capacity_credit > 0
        assert not settlement.simulated
        assert sum(line.net for line in settlement.lines.all()) == settlement.net
