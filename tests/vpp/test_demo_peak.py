"""The demo depot (``vpp.demo_peak``): its simulated history is shaved by the real planner, settled by the real
settlement, labelled simulated, and seeding again changes nothing.

By hand: the load without the fleet is the profile file's 5-min means x 0.5 x the day's factor; June 2025's
highest 15-min demand comes from the profile's highest quarter-hour on its highest-factor weekday.
"""

from __future__ import annotations

import csv
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chargers.models import MeterValue
from fleet.seeding import DEMO, demo_organisation
from fleet.services.stations import stations_provision
from markets.peak.models import PeakSettlement, SiteMeter, SiteMeterReading
from vpp.demo_peak import LABEL, METER_STATION, demo_peak_seed

pytestmark = pytest.mark.django_db
NOW = datetime(2025, 7, 2, 16, 0, tzinfo=UTC)  # Wednesday 2 July 2025, 12:00 EDT
STATIONS = ["dp-1", "dp-2", "dp-3"]
PROFILE = Path(__file__).resolve().parents[2] / "markets" / "data" / "depot-load-weekday-5min.csv"


@pytest.fixture
def demo(tmp_path: Path, settings: Any) -> None:
    settings.VAR_DIR = tmp_path
    stations_provision(station_ids=STATIONS, password="a-demo-station-pw-0123", organisation=demo_organisation(DEMO))


def _june_peak_without_fleet_w() -> int:
    with PROFILE.open() as f:
        five = [int(r["import_w"]) for r in csv.DictReader(f)]
    quarter = max(sum(five[k : k + 3]) / 3 for k in range(0, 288, 3))
    weekdays = [date(2025, 6, d) for d in range(1, 31) if date(2025, 6, d).weekday() < 5]
    factor = max(random.Random(d.toordinal()).uniform(0.95, 1.05) for d in weekdays)
    return round(quarter * 0.5 * factor)


@pytest.mark.usefixtures("demo")
def test_the_demo_depots_last_billing_period_is_shaved_and_settled_and_labelled_simulated() -> None:
    # When the demo depot is seeded on 2 July 2025
    made = demo_peak_seed(now=NOW, station_ids=STATIONS)
    # Then June 1 .. July 1 are simulated (31 days), June (billing from the 1st, America/New_York) is settled
    assert made.days == 31
    settlement = PeakSettlement.objects.get(pk=made.settlement_id)
    assert settlement.period_start == datetime(2025, 6, 1, 4, tzinfo=UTC)
    assert settlement.intervals_metered == settlement.intervals_expected == 30 * 96
    # and without the fleet June would have peaked at the profile's peak on its busiest weekday (within 1 W: the
    # readings are whole watts), which the three cars brought down: money avoided on both charges
    facility = settlement.lines.get(charge_name="facility")
    assert abs(facility.counterfactual_peak_w - _june_peak_without_fleet_w()) <= 1
    assert facility.metered_peak_w < facility.counterfactual_peak_w
    assert settlement.avoided > 0
    assert settlement.avoided == settlement.counterfactual_charge - settlement.metered_charge
    # and everything it made says simulated; the site meter is the demo meter station's EVSE 0
    assert set(SiteMeterReading.objects.values_list("source_ref", flat=True)) == {LABEL}
    assert set(MeterValue.objects.values_list("source", flat=True)) == {"simulated"}
    assert SiteMeter.objects.get(site_id=made.site_id).station.station_id == METER_STATION


@pytest.mark.usefixtures("demo")
def test_seeding_the_demo_depot_again_changes_nothing() -> None:
    first = demo_peak_seed(now=NOW, station_ids=STATIONS)
    counts = (SiteMeterReading.objects.count(), MeterValue.objects.count(), PeakSettlement.objects.count())
    again = demo_peak_seed(now=NOW + timedelta(hours=1), station_ids=STATIONS)
    assert (again.days, again.settlement_id) == (0, first.settlement_id)
    assert (SiteMeterReading.objects.count(), MeterValue.objects.count(), PeakSettlement.objects.count()) == counts
