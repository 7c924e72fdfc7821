"""The demo's generated history: bids through the bidding services, awards, scores and settlements computed by the
real code from simulated meter values, every row of it flagged simulated; and a restart adds nothing twice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from chargers.models import MeterValue
from markets.models import Award, Bid, BidEvent
from markets.regulation.models import PerformanceScoreRecord, ReserveDeployment, Settlement, SettlementLine
from markets.regulation.reports import regulation_report
from vpp.dashboard.selectors_regulation import running_score
from vpp.demo_market import OPERATOR

pytestmark = pytest.mark.django_db


def test_a_short_demo_seed_produces_awards_scores_and_settlements_marked_simulated(
    tmp_path: Path, settings: Any
) -> None:
    # Given the demo seeded with four stations and two days of history
    settings.VAR_DIR = tmp_path
    call_command("demo_seed", "--stations", "4", "--id-prefix", "hist", "--history-days", "2")

    # Then regulation was awarded through bids of the demo market, every one of them flagged simulated
    awards = Award.objects.filter(product__operator__code=OPERATOR)
    assert awards.count() >= 4
    assert not awards.filter(simulated=False).exists()
    assert not Bid.objects.filter(product__operator__code=OPERATOR, simulated=False).exists()
    # And each bid went draft -> approved -> submitted -> awarded in its audit trail
    award = awards.first()
    assert award is not None
    assert list(BidEvent.objects.filter(bid=award.bid).values_list("to_status", flat=True)) == [
        "draft",
        "approved",
        "submitted",
        award.bid.status,
    ]
    # And every awarded hour was scored and settled per quarter-hour (the demo operator's settlement period),
    # simulated, with lines owned by the demo organisations
    assert Settlement.objects.count() == 4 * awards.filter(awarded_w__gt=0).count()
    assert {s.period_end - s.period_start for s in Settlement.objects.all()} == {timedelta(minutes=15)}
    assert not Settlement.objects.filter(simulated=False).exists()
    scores = PerformanceScoreRecord.objects.all()
    assert scores.exists()
    assert not scores.filter(simulated=False).exists()
    assert min(s.composite for s in scores) > 0.75  # the simulated fleet follows the signal: it passes
    owners = set(SettlementLine.objects.values_list("owner__slug", flat=True))
    assert owners == {"demo", "harbour"}
    # And each awarded hour earns (a quarter-hour may net a few cents' loss at demo scale when its charging cost
    # more than its quarter of the capacity credit: settled as metered)
    for award in awards.filter(awarded_w__gt=0, product__kind="regulation"):
        nets = [(s.period_start, s.net, s.penalty) for s in Settlement.objects.filter(award=award)]
        assert sum(net for _, net, _ in nets) > 0, (award.product.code, nets)

    # And each block's hours held synchronized reserve too, each block's first hour with a reserve event carried
    # by the regulation setpoints, measured from the simulated meter values and settled, all flagged simulated
    reserve = awards.filter(product__kind="reserve", awarded_w__gt=0)
    assert reserve.exists()
    assert not reserve.filter(simulated=False).exists()
    events = ReserveDeployment.objects.filter(product__operator__code=OPERATOR)
    first_hours = {a.interval_start for a in reserve if a.interval_start.hour in (12, 22)}  # history_blocks' starts
    assert {(e.start - timedelta(minutes=20)) for e in events} == first_hours  # one event per block, 20 min in
    assert set(events.values_list("source", flat=True)) == {"simulated"}
    for event in events:
        measured = event.performance
        assert measured.simulated
        assert measured.credited_w >= 0.95 * event.power_w, measured
    for award in reserve:
        assert {s.capacity_credit > 0 for s in Settlement.objects.filter(award=award)} == {True}

    # And the revenue page sets each product's money side by side: the settlements' nets per kind of product
    staff = get_user_model().objects.create(username="auditor", is_staff=True)
    since = min(a.interval_start for a in awards)
    page = regulation_report(user=staff, since=since, until=timezone.now())
    per_product = {r["key"]: r["net"] for r in page.revenue["product"]}
    for kind, name in (("regulation", "regulation"), ("reserve", "synchronized reserve")):
        settled = sum((s.net for s in Settlement.objects.filter(award__product__kind=kind)), Decimal(0))
        assert per_product[name] == settled, name  # summed here in Decimal: exact, whatever the database
    # And the meter values behind them are marked as simulated
    assert MeterValue.objects.filter(source="simulated").exists()
    assert not MeterValue.objects.exclude(source="simulated").exists()

    # And the dashboard's running score, read 20 minutes into a simulated hour, is computed from the same stored data
    hour = awards.filter(awarded_w__gt=0).order_by("interval_start").first()
    assert hour is not None
    at = hour.interval_start + timedelta(minutes=20)
    score = running_score(product=hour.product, portfolio=hour.portfolio, at=at, capacity_w=hour.awarded_w)
    assert score["available"]
    assert score["rows"] == 120
    assert score["composite"] > 0.75
    early = running_score(product=hour.product, portfolio=hour.portfolio, at=at - timedelta(minutes=15), capacity_w=1)
    assert not early["available"]
    assert "10 min 10 s" in early["why"]

    # When the demo is seeded again (a restart)
    awards_before = set(Award.objects.values_list("product_id", "portfolio", "interval_start"))
    periods_before = set(Settlement.objects.values_list("award_id", "period_start"))
    meter_values_before = MeterValue.objects.count()
    call_command("demo_seed", "--stations", "4", "--id-prefix", "hist", "--history-days", "2")
    # Then nothing was generated twice: every hour is awarded and every period settled once. (A block the first
    # seed could not simulate, its stations then busy with the live fleet's plug-ins, may be simulated now: at
    # some hours of the day the live sessions overlap the last history block.)
    awarded_hours = list(Award.objects.values_list("product_id", "portfolio", "interval_start"))
    settled_periods = list(Settlement.objects.values_list("award_id", "period_start"))
    assert len(awarded_hours) == len(set(awarded_hours))
    assert len(settled_periods) == len(set(settled_periods))
    assert awards_before <= set(awarded_hours)
    assert periods_before <= set(settled_periods)
    new_blocks = len(set(awarded_hours) - awards_before)
    assert MeterValue.objects.count() == meter_values_before or new_blocks > 0
