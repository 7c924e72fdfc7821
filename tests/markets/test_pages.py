"""The bidding admin's pages: the index of operators and delivery days, an operator's day (its own products only,
the price forecast beside the capacity offered, awards, shortfall, score and revenue next to the bids), the CSV of
its table, proposals refused once the gate closed, and money written in the operator's currency."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.test import Client

from fleet.models import Membership, Role
from markets.charts import BID_COLUMNS, bidding_chart, bidding_csv
from markets.models import Award, BidProposal, MarketOperator, PricePoint, Product, Source
from markets.selectors import GateState, bidding_day, delivery_day
from markets.services.bids import MarketError
from markets.services.proposals import proposal_prepare
from markets.templatetags.money import money_text, price
from tests.e2e.seed import settled_hours_seed
from tests.fleet.factories import FleetFactory, UserFactory, VehicleFactory
from tests.markets.conftest import BidFactory
from tests.markets.regulation.data import stations

pytestmark = pytest.mark.django_db
NY = ZoneInfo("America/New_York")


def _pjm() -> MarketOperator:
    return MarketOperator.objects.get(code="pjm")


def _bidding_admin_of(fleet_portfolio_org) -> Client:
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=fleet_portfolio_org, role=Role.BIDDING_ADMIN)
    client = Client()
    client.force_login(user)
    return client


# --- money ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (Decimal("1234.565"), "USD", "$1,234.56"),  # half to even, as settlement rounds
        (Decimal("1234.575"), "USD", "$1,234.58"),
        (Decimal("-12.5"), "EUR", "-€12.50"),
        (Decimal("1000000"), "GBP", "£1,000,000.00"),
        (Decimal("1234.5"), "JPY", "¥1,234"),
        (Decimal("99.1"), "CHF", "99.10 CHF"),
        (None, "USD", ""),
    ],
)
def test_it_writes_money_in_its_currency(amount, currency, text) -> None:
    assert money_text(amount, currency) == text


def test_it_writes_a_price_in_the_operators_currency_and_unit() -> None:
    # Given PJM (USD per MW-h, tick 0.01) and a euro operator pricing per kW-month
    euro = MarketOperator(code="eu", currency="EUR", price_unit="per_kw_month", price_tick=Decimal("0.001"))
    # Then a price reads as money per unit, never "USD currency"
    assert price(Decimal("18.5"), _pjm()) == "$18.50/MW-h"
    assert price(Decimal("7.1234"), euro) == "€7.123/kW-month"


# --- gates ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now_local", "state"),
    [
        (datetime(2026, 3, 9, 10, 29, tzinfo=NY), GateState.OPEN),  # the day before, just before 10:30
        (datetime(2026, 3, 9, 10, 30, tzinfo=NY), GateState.CLOSED),
        (datetime(2026, 3, 10, 0, 0, tzinfo=NY), GateState.DELIVERING),
        (datetime(2026, 3, 11, 0, 0, tzinfo=NY), GateState.DELIVERED),
    ],
)
def test_a_delivery_day_knows_where_it_stands_against_its_gate(now_local, state) -> None:
    # Given PJM's delivery day 2026-03-10 (gate 10:30 New York the day before); then its state at each moment
    assert delivery_day(operator=_pjm(), day=date(2026, 3, 10), now=now_local.astimezone(UTC)).state == state


def test_it_refuses_a_proposal_once_the_gate_closed_or_the_day_began() -> None:
    # Given PJM's delivery day 2026-03-10
    day, operator = date(2026, 3, 10), _pjm()
    # When a proposal is asked for after the gate, and during the day
    with pytest.raises(
        MarketError, match=r"gate for 2026-03-10 closed at 2026-03-09 14:30 UTC \(10:30 America/New_York\)"
    ):
        proposal_prepare(operator=operator, portfolio="all", day=day, now=datetime(2026, 3, 9, 15, 0, tzinfo=UTC))
    with pytest.raises(MarketError, match="no bids can be proposed for past intervals"):
        proposal_prepare(operator=operator, portfolio="all", day=day, now=datetime(2026, 3, 10, 6, 0, tzinfo=UTC))
    # Then nothing was asked of the optimiser; before the gate a proposal is pending
    assert not BidProposal.objects.exists()
    made = proposal_prepare(operator=operator, portfolio="all", day=day, now=datetime(2026, 3, 9, 12, 0, tzinfo=UTC))
    assert made.status == BidProposal.Status.PENDING


def test_the_page_refuses_a_proposal_for_a_closed_gate_with_the_reason() -> None:
    # Given an operator signed in, and yesterday's delivery day (its gate long closed)
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    yesterday = (datetime.now(NY) - timedelta(days=1)).date()
    # When they ask for a proposal for it
    response = client.post(f"/markets/pjm/{yesterday}/propose/", {"portfolio": "all"})
    # Then it is refused (409) on a page saying why, and nothing is proposed
    assert response.status_code == 409
    assert "no bids can be proposed for past intervals" in response.content.decode()
    assert not BidProposal.objects.exists()


# --- an operator's day --------------------------------------------------------------------------------------------


def test_an_operators_page_shows_only_its_own_products() -> None:
    # Given a PJM bid and a depot bid on the same day
    pjm_bid = BidFactory.create()
    depot = Product.objects.get(operator__code="depot")
    depot_bid = BidFactory.create(product=depot, quantity_w=50_000, interval_start=pjm_bid.interval_start)
    day = pjm_bid.interval_start.astimezone(NY).date()
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    # When the PJM page and the depot page of that day are opened
    pjm_page = client.get(f"/markets/pjm/{day}/").content.decode()
    depot_page = client.get(f"/markets/depot/{day}/").content.decode()
    # Then each lists its own bids only, and its chart names its own products only
    assert pjm_bid.external_ref in pjm_page
    assert depot_bid.external_ref not in pjm_page
    assert depot_bid.external_ref in depot_page
    assert pjm_bid.external_ref not in depot_page
    assert "peak-shaving" not in pjm_page
    assert "$/kW-month" in depot_page
    assert "USD currency" not in depot_page


def test_a_bidding_admin_sees_their_portfolios_bids_only() -> None:
    # Given two organisations' bids on one day
    mine, theirs = FleetFactory.create(), FleetFactory.create()
    own = BidFactory.create(portfolio=f"fleet-{mine.pk}")
    other = BidFactory.create(portfolio=f"fleet-{theirs.pk}", interval_start=own.interval_start)
    client = _bidding_admin_of(mine.organisation)
    # When the bidding admin of the first opens the day and its CSV
    day = own.interval_start.astimezone(NY).date()
    page = client.get(f"/markets/pjm/{day}/").content.decode()
    rows = list(csv.DictReader(io.StringIO(client.get(f"/markets/pjm/{day}/bids.csv").content.decode())))
    # Then only their own bid is there
    assert own.external_ref in page
    assert other.external_ref not in page
    assert [r["bid_ref"] for r in rows] == [own.external_ref]


def _settled_day() -> tuple[date, str]:
    """Two settled RegD hours of one fleet (scored and settled by the real code), yesterday in New York."""
    fleet = FleetFactory.create()
    VehicleFactory.create_batch(2, fleet=fleet)
    start = datetime.now(NY).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=1)
    hours = [start.astimezone(UTC), (start + timedelta(hours=1)).astimezone(UTC)]
    settled_hours_seed(fleet=fleet, stations=stations(2), hours=hours)
    return start.date(), f"fleet-{fleet.pk}"


def test_awards_shortfall_score_and_revenue_stand_next_to_each_bid() -> None:
    # Given two settled hours; the second award was cut to half the offer
    day, portfolio = _settled_day()
    cut = Award.objects.filter(portfolio=portfolio).order_by("interval_start").reverse()[0]
    Award.objects.filter(pk=cut.pk).update(awarded_w=cut.awarded_w // 2)
    # When the day is read for an operator
    found = bidding_day(operator=_pjm(), day=day, user=UserFactory.create(is_staff=True), now=datetime.now(UTC))
    # Then each bid carries its award, what was not awarded, the score and the settled net
    first, second = found.outcomes
    assert (first.shortfall_w, second.shortfall_w) == (0, cut.awarded_w - cut.awarded_w // 2)
    assert first.score == Decimal("1.000")
    assert first.award is not None
    assert first.revenue == first.award.settlements.get().net
    assert first.revenue is not None
    assert second.revenue is not None
    assert found.revenue == first.revenue + second.revenue


def test_the_csv_holds_the_tables_rows_and_the_chart_plots_them() -> None:
    # Given a settled day and a price forecast for it
    day, _ = _settled_day()
    operator = _pjm()
    product = Product.objects.get(operator=operator, code="reg-d")
    delivery = delivery_day(operator=operator, day=day, now=datetime.now(UTC))
    PricePoint.objects.create(
        product=product,
        interval_start=delivery.start + timedelta(hours=9),
        interval_minutes=60,
        price=Decimal("21.25"),
        kind=PricePoint.Kind.FORECAST,
        source=Source.FORECAST,
        belief_time=delivery.start - timedelta(days=1),
    )
    found = bidding_day(operator=operator, day=day, user=UserFactory.create(is_staff=True), now=datetime.now(UTC))
    # When the CSV and the chart are made from it
    rows = list(csv.DictReader(io.StringIO(bidding_csv(found))))
    chart = bidding_chart(found)
    # Then the CSV has the table's rows, in order, with its figures
    assert list(rows[0]) == BID_COLUMNS
    assert [r["bid_ref"] for r in rows] == [o.bid.external_ref for o in found.outcomes]
    assert [Decimal(r["revenue"]) for r in rows] == [o.revenue for o in found.outcomes]
    assert [r["forecast_price"] for r in rows] == ["21.2500", ""]
    # And the chart plots the same offered capacity, and the forecast beside it on its own axis
    offered = next(t for t in chart["data"] if t["name"] == "reg-d: offered (MW)")
    assert offered["y"] == [float(Decimal(r["offered_mw"])) for r in rows]
    forecast = next(t for t in chart["data"] if t["name"] == "reg-d: price forecast ($/MW-h)")
    assert (forecast["yaxis"], forecast["y"]) == ("y2", [21.25])


def test_the_chart_has_a_title_axis_titles_with_units_and_a_legend_entry_per_trace() -> None:
    # Given a settled day; when its chart is made
    day, _ = _settled_day()
    found = bidding_day(operator=_pjm(), day=day, user=UserFactory.create(is_staff=True), now=datetime.now(UTC))
    layout, traces = bidding_chart(found)["layout"], bidding_chart(found)["data"]
    # Then it says what it shows and in which units, and each trace is named once
    assert layout["title"]["text"]
    assert layout["xaxis"]["title"]["text"] == "delivery time (America/New_York)"
    assert (layout["yaxis"]["title"]["text"], layout["yaxis2"]["title"]["text"]) == ("capacity (MW)", "price ($/MW-h)")
    names = [t["name"] for t in traces]
    assert all(names)
    assert len(names) == len(set(names))


def test_the_index_lists_each_operators_days_with_their_gate() -> None:
    # Given a bid for tomorrow afternoon; when an operator opens the bidding index
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=17, minute=0, second=0, microsecond=0)
    bid = BidFactory.create(interval_start=tomorrow, interval_end=tomorrow + timedelta(hours=1))
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    page = client.get("/markets/").content.decode()
    # Then every active operator is there, the bid's day links to its page, and today is being delivered
    day = bid.interval_start.astimezone(NY).date()
    assert 'data-testid="operator-pjm"' in page
    assert 'data-testid="operator-depot"' in page
    assert f'href="/markets/pjm/{day}/"' in page
    assert '<span class="badge delivering">delivering</span>' in page


def test_the_old_address_leads_to_the_day_page() -> None:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    response = client.get("/markets/bidding/", {"operator": "depot", "day": "2026-03-10"})
    assert (response.status_code, response["Location"]) == (302, "/markets/depot/2026-03-10/")
