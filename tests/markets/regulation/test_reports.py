"""The regulation and revenue page: scoped to the organisation, every chart titled with units, and each CSV holding
exactly what the page plots or lists (both come from one ``regulation_report``). Hours are scored and settled by the
real code on stored signal and meter values (tests.e2e.seed)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client

from fleet.models import Fleet, Membership, PlugSession, Role
from markets.peak.models import PeakSettlement
from markets.regulation.charts import revenue_chart, scores_chart, signal_chart
from markets.regulation.reports import (
    CSV_KINDS,
    RegulationReport,
    SignalSeries,
    peak_revenue_by,
    regulation_report,
    report_csv,
)
from tests.e2e.seed import settled_hours_seed
from tests.fleet.factories import FleetFactory, UserFactory, VehicleFactory
from tests.markets.regulation.data import stations

pytestmark = pytest.mark.django_db
HOURS = [datetime(2026, 3, 10, 14, 0, tzinfo=UTC), datetime(2026, 3, 10, 15, 0, tzinfo=UTC)]
SINCE, UNTIL = datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)


@pytest.fixture(scope="module")
def two_tenants(django_db_setup: None, django_db_blocker: Any) -> Iterator[list[Fleet]]:
    """Two organisations, each a fleet of two vans on stations of its own, both settled for the same two hours.
    Made once for the module (scoring and settling take seconds), rolled back at its end."""
    with django_db_blocker.unblock(), transaction.atomic():
        chargers = stations(4)
        fleets = []
        for pair in (chargers[:2], chargers[2:]):
            fleet = FleetFactory.create()
            VehicleFactory.create_batch(2, fleet=fleet)
            settled_hours_seed(fleet=fleet, stations=pair, hours=HOURS)
            fleets.append(fleet)
        yield fleets
        transaction.set_rollback(True)


def _series(report: RegulationReport) -> SignalSeries:
    assert report.series is not None
    return report.series


def _manager(fleet: Fleet) -> User:
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=fleet.organisation, role=Role.FLEET_MANAGER)
    return user


def test_an_organisation_sees_only_its_own_revenue_and_charge_points(two_tenants) -> None:
    # Given two organisations settled for the same hours
    mine, _theirs = two_tenants
    # When the first one's fleet manager reads the report
    report = regulation_report(user=_manager(mine), since=SINCE, until=UNTIL)
    # Then the revenue is that of its own vans, and the reconciliation covers its own charge points only
    own_vans = set(mine.vehicles.values_list("name", flat=True))
    assert {r["key"] for r in report.revenue["vehicle"]} == own_vans
    own_stations = set(PlugSession.objects.filter(vehicle__fleet=mine).values_list("station_id", flat=True))
    assert len(own_stations) == 2
    assert {r.station_id for r in report.reconciliation} == own_stations
    assert report.reconciled
    # And no award figures (scores, award settlements) are shown to a fleet manager
    assert (report.award_figures, report.scores, report.settlements, report.series) == (False, [], [], None)


def test_the_revenue_per_hour_day_product_and_vehicle_add_up_to_the_settlements(two_tenants) -> None:
    # Given an operator's view of both organisations
    report = regulation_report(user=UserFactory.create(is_staff=True), since=SINCE, until=UNTIL)
    total = sum((s.net for s in report.settlements), Decimal(0))
    # Then every grouping sums to the award settlements' net, to the cent
    for by in ("hour", "day", "product", "vehicle"):
        assert sum((r["net"] for r in report.revenue[by]), Decimal(0)) == total, by
    assert [r["key"] for r in report.revenue["hour"]] == HOURS
    assert report.net_total == total


@pytest.mark.parametrize("kind", [k for k in CSV_KINDS if k != "signal"])
def test_each_csv_holds_the_rows_the_page_lists(two_tenants, kind: str) -> None:
    # Given an operator's report
    report = regulation_report(user=UserFactory.create(is_staff=True), since=SINCE, until=UNTIL)
    # When one of its tables is exported
    _, text = report_csv(report, kind)
    rows = list(csv.reader(io.StringIO(text)))[1:]
    # Then it has one row per row of the page's table
    expected: dict[str, list[Any]] = {
        "scores": list(report.scores),
        "settlements": list(report.settlements),
        "reconciliation": list(report.reconciliation),
    }
    listed = expected.get(kind) or report.revenue[kind.removeprefix("revenue-")]
    assert len(rows) == len(listed) > 0


def test_the_revenue_chart_plots_the_csvs_figures(two_tenants) -> None:
    # Given an operator's report, its revenue-per-hour chart and CSV
    report = regulation_report(user=UserFactory.create(is_staff=True), since=SINCE, until=UNTIL)
    chart = revenue_chart(report, "hour")
    rows = list(csv.DictReader(io.StringIO(report_csv(report, "revenue-hour")[1])))
    # Then the chart's net markers are the CSV's net column, hour by hour
    net = next(t for t in chart["data"] if t["name"] == "net, all products ($)")
    assert net["y"] == [float(r["net"]) for r in rows]
    # And each hour's regulation bar is its net (the only product settled in these hours), named in the legend
    assert [t["name"] for t in chart["data"]] == ["regulation ($)", "net, all products ($)"]
    assert {r["product"] for r in rows} == {"regulation"}
    assert net["x"] == ["2026-03-10 14:00:00", "2026-03-10 15:00:00"]
    assert [r["hour"] for r in rows] == [h.isoformat() for h in HOURS]


def test_the_signal_chart_and_its_csv_are_the_same_series(two_tenants) -> None:
    # Given the report of one scored hour, chosen by its score
    operator = UserFactory.create(is_staff=True)
    first = regulation_report(user=operator, since=SINCE, until=UNTIL)
    chosen = min(first.scores, key=lambda s: s.period_start)
    report = regulation_report(user=operator, since=SINCE, until=UNTIL, score_id=chosen.pk)
    # When its chart and CSV are made
    chart = signal_chart(_series(report))
    rows = list(csv.DictReader(io.StringIO(report_csv(report, "signal")[1])))
    # Then they hold the same points: the scored hour's 10-s rows (391, look-ahead included)
    signal, response = chart["data"][0], chart["data"][1]
    assert len(rows) == len(signal["y"]) == chosen.rows == 391
    assert [float(r["signal_mw"]) for r in rows] == signal["y"]
    assert [float(r["response_mw"]) for r in rows] == response["y"]
    assert rows[0]["time_utc"] == chosen.period_start.isoformat()


def test_every_chart_has_a_title_axis_titles_with_units_and_a_legend_entry_per_trace(two_tenants) -> None:
    report = regulation_report(user=UserFactory.create(is_staff=True), since=SINCE, until=UNTIL)
    for chart in (signal_chart(_series(report)), scores_chart(report), revenue_chart(report, "day")):
        layout = chart["layout"]
        assert layout["title"]["text"]
        assert "(" in layout["xaxis"]["title"]["text"]  # a unit or a time zone
        assert "(" in layout["yaxis"]["title"]["text"]
        names = [t["name"] for t in chart["data"]]
        assert all(names)
        assert len(names) == len(set(names))
    assert scores_chart(report)["layout"]["yaxis"]["range"] == [0, 1.05]


def test_the_page_offers_each_csv_and_an_unknown_one_is_404(two_tenants) -> None:
    # Given a fleet manager of the first organisation
    client = Client()
    client.force_login(_manager(two_tenants[0]))
    until = UNTIL.isoformat()
    # When they open the page and one of its downloads
    page = client.get("/regulation/", {"days": "1", "until": until})
    download = client.get("/regulation/export/revenue-vehicle.csv", {"days": "1", "until": until})
    # Then the page shows its revenue, the CSV names its own vans only, and a made-up export is 404
    assert page.status_code == download.status_code == 200
    assert download["Content-Disposition"].startswith('attachment; filename="regulation-revenue-vehicle-')
    vans = {r["vehicle"] for r in csv.DictReader(io.StringIO(download.content.decode()))}
    assert vans == set(two_tenants[0].vehicles.values_list("name", flat=True))
    assert client.get("/regulation/export/passwords.csv").status_code == 404


def test_a_period_is_checked(two_tenants) -> None:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    assert client.get("/regulation/export/scores.csv", {"days": "100"}).status_code == 400
    naive = (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None)
    assert client.get("/regulation/", {"until": naive.isoformat()}).status_code == 400


def test_the_revenue_chart_sets_each_products_money_side_by_side() -> None:
    # Given an hour's settled revenue: regulation $1.20 and reserve $0.30 at 14:00, reserve $0.10 at 15:00, and a
    # depot's avoided demand charge of $25.00 whose billing period starts at 15:00
    peak = PeakSettlement(period_start=HOURS[1], currency="USD", avoided=Decimal("25.00"))
    money = dict.fromkeys(("capacity_credit", "performance_credit", "energy_amount", "degradation_cost"), Decimal(0))
    rows = [
        {"key": HOURS[0], "product": "regulation", "currency": "USD", **money, "net": Decimal("1.20")},
        {"key": HOURS[0], "product": "synchronized reserve", "currency": "USD", **money, "net": Decimal("0.30")},
        {"key": HOURS[1], "product": "synchronized reserve", "currency": "USD", **money, "net": Decimal("0.10")},
        *peak_revenue_by([peak], by="hour"),
    ]
    report = RegulationReport(since=SINCE, until=UNTIL, award_figures=True, revenue={"hour": rows})
    # When its chart is drawn
    chart = revenue_chart(report, "hour")
    # Then one bar per product, named in the legend, and the net of all of them as markers
    traces = {t["name"]: t["y"] for t in chart["data"]}
    assert traces == {
        "regulation ($)": [1.2, 0.0],
        "synchronized reserve ($)": [0.3, 0.1],
        "peak shaving ($)": [0.0, 25.0],
        "net, all products ($)": [1.5, 25.1],
    }
    # And peak shaving has no vehicle lines, and counts once per billing period
    assert peak_revenue_by([peak], by="vehicle") == []
    assert [(r["key"], r["net"], r["lines"]) for r in peak_revenue_by([peak], by="product")] == [
        ("peak shaving", Decimal("25.00"), 1)
    ]
