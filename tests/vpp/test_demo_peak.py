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
    assert made.settlement_id is not None
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
    meter = SiteMeter.objects.select_related("station").get(site_id=made.site_id)
    assert meter.station is not None
    assert meter.station.station_id == METER_STATION


@pytest.mark.usefixtures("demo")
def test_seeding_the_demo_depot_again_changes_nothing() -> None:
    first = demo_peak_seed(now=NOW, station_ids=STATIONS)
    counts = (SiteMeterReading.objects.count(), MeterValue.objects.count(), PeakSettlement.objects.count())
    again = demo_peak_seed(now=NOW + timedelta(hours=1), station_ids=STATIONS)
    assert (again.days, again.settlement_id) == (0, first.settlement_id)
    assert (SiteMeterReading.objects.count(), MeterValue.objects.count(), PeakSettlement.objects.count()) == counts


def _profile_at_w(at: datetime) -> int:
    """The profile's 5-min mean at ``at`` (New York time) x 0.5 x the day's factor, from the file itself."""
    from zoneinfo import ZoneInfo

    with PROFILE.open() as f:
        five = [int(r["import_w"]) for r in csv.DictReader(f)]
    local = at.astimezone(ZoneInfo("America/New_York"))
    factor = random.Random(local.date().toordinal()).uniform(0.95, 1.05) * (0.55 if local.weekday() >= 5 else 1.0)
    return round(five[(local.hour * 60 + local.minute) // 5] * 0.5 * factor)


@pytest.mark.live
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
async def test_the_live_demo_meter_is_stored_as_the_depots_site_meter_over_a_real_ocpp_connection(
    tmp_path: Path, settings: Any
) -> None:
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    from markets.peak.models import MeterSource
    from tests.chargers.conftest import start_server, stop_server
    from vpp.demo_peak import depot_meter_run

    # Given the demo depot set up (no history: no plan, nothing to shave) and the CSMS running
    settings.VAR_DIR = tmp_path

    def seed() -> None:
        org = demo_organisation(DEMO)
        stations_provision(station_ids=STATIONS, password="a-demo-station-pw-0123", organisation=org)
        demo_peak_seed(now=datetime.now(UTC), station_ids=STATIONS, history=False)

    await sync_to_async(seed)()
    # the site meter's readings are stored by a Celery task: run eagerly in the server (no worker runs in tests)
    server = start_server({"REDIS_URL": ""})
    stop = asyncio.Event()
    task = asyncio.ensure_future(depot_meter_run(csms_url=server.ws_url, stop=stop, period_s=0.5))

    def stored() -> list[tuple[datetime, int]]:
        return list(SiteMeterReading.objects.filter(source=MeterSource.OCPP).values_list("start", "import_w"))

    try:
        # When the demo meter has reported for a while
        for _ in range(600):
            if len(await sync_to_async(stored)()) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        stop_server(server)
        await sync_to_async(connections.close_all)()
    # Then the CSMS stored its readings as the depot's site meter, each the profile at that time (no cars reporting)
    readings = await sync_to_async(stored)()
    assert len(readings) >= 2
    for at, w in readings:
        assert w == _profile_at_w(at)
