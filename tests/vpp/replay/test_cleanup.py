"""``regulation replay`` leaves nothing of its own in the product's views: its stations, fleet, bids, award, signal
and anything settled of them are deleted at the end (``--keep`` keeps them), also when it fails half-way."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chargers.models import MeterValue, Station
from fleet.models import Fleet, Organisation, Vehicle
from markets.models import Award, Bid
from markets.regulation.models import RegulationSignal, Settlement, SettlementLine
from tests.chargers.factories import StationFactory
from tests.fleet.factories import VehicleFactory
from tests.markets.conftest import BidFactory
from vpp.replay import harness

pytestmark = pytest.mark.django_db
SIGNAL = Path(__file__).resolve().parents[3] / "markets" / "data" / "pjm-regd-test-signal-40min.csv"
HOUR = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _replay_world() -> tuple[list[str], str, int]:
    """What a replay leaves behind: stations with readings, a fleet, an award with its bid, the signal, and a
    settlement the hourly task made of it meanwhile."""
    ids = harness.stations_provision(count=2, prefix="rpclean", password="a-station-password-0123")
    org, _ = Organisation.objects.get_or_create(slug=harness.REPLAY_ORG, defaults={"name": "Regulation replay"})
    fleet = Fleet.objects.create(organisation=org, name="replay rpclean")
    vehicle = VehicleFactory.create(fleet=fleet)
    portfolio = f"fleet-{fleet.pk}"
    product = harness.product_default()
    award = harness.award_create(
        product=product, portfolio=portfolio, capacity_w=100_000, start=HOUR, end=HOUR + timedelta(hours=1)
    )
    RegulationSignal.objects.create(
        product=product, portfolio=portfolio, at=HOUR, value=Decimal("0.5"), source="websocket", belief_time=HOUR
    )
    station = Station.objects.get(station_id=ids[0])
    reading = MeterValue.objects.create(
        station=station, timestamp=HOUR, received_at=HOUR, measurand="Power.Active.Import", value=1, unit="W",
        source="MeterValues",
    )  # fmt: skip
    money = {k: Decimal("1.00") for k in ("capacity_credit", "performance_credit", "energy_amount", "net")}
    settlement = Settlement.objects.create(
        award=award, period_start=HOUR, period_end=HOUR + timedelta(hours=1), score_value=Decimal(1),
        awarded_w=100_000, capacity_price=Decimal(1), performance_price=Decimal(1), mileage_ratio=Decimal(1),
        degradation_cost=Decimal(0), exact={}, import_wh=0, export_wh=0, computed_at=HOUR, **money,
    )  # fmt: skip
    SettlementLine.objects.create(
        settlement=settlement, station=station, evse_id=1, vehicle=vehicle, owner=org, vehicle_ref="car",
        owner_ref="replay", response_wh=0, import_wh=0, export_wh=0, pack_throughput_wh=0, meter_count=1,
        meter_first=reading, meter_last=reading, meter_digest="", degradation_cost=Decimal(0), **money,
    )  # fmt: skip
    return ids, portfolio, fleet.pk


def test_the_cleanup_deletes_the_replays_rows_and_nothing_else() -> None:
    # Given a replay's leftovers beside a station and a bid of someone else's
    other_station = StationFactory.create(station_id="depot-keep-1")
    other_bid = BidFactory.create(portfolio="fleet-999999", external_ref="KEEP-ME")
    ids, portfolio, fleet_id = _replay_world()
    # When the replay's rows are cleaned up
    harness.replay_cleanup(station_ids=ids, portfolio=portfolio, fleet_id=fleet_id)
    # Then none of them is left
    assert not Station.objects.filter(station_id__in=ids).exists()
    assert not Fleet.objects.filter(pk=fleet_id).exists()
    assert not Vehicle.objects.filter(fleet_id=fleet_id).exists()
    assert not Bid.objects.filter(portfolio=portfolio).exists()
    assert not Award.objects.filter(portfolio=portfolio).exists()
    assert not RegulationSignal.objects.filter(portfolio=portfolio).exists()
    assert not Settlement.objects.filter(award__portfolio=portfolio).exists()
    assert not Organisation.objects.filter(slug=harness.REPLAY_ORG).exists()
    # And the others' rows are untouched
    assert Station.objects.filter(pk=other_station.pk).exists()
    assert Bid.objects.filter(pk=other_bid.pk).exists()


def test_a_replay_that_fails_half_way_still_removes_its_stations(monkeypatch, tmp_path) -> None:
    # Given a CSMS that is up but agents that cannot start
    @contextlib.contextmanager
    def csms(url: str | None, **_: object) -> Iterator[tuple[str, str]]:
        yield "ws://127.0.0.1:9", "http://127.0.0.1:9"

    @contextlib.contextmanager
    def agents(**_: object) -> Iterator[None]:
        raise harness.ReplayError("the edge-agent command is not installed")
        yield

    monkeypatch.setattr(harness, "live_csms", csms)
    monkeypatch.setattr(harness, "simulated_agents", agents)
    out = io.StringIO()
    # When the replay runs
    with pytest.raises(harness.ReplayError):
        call_command("regulation", "replay", signal=str(SIGNAL), vehicles=2, out=str(tmp_path / "r.csv"), stdout=out)
    # Then the stations it provisioned are gone again, and it said so
    assert not Station.objects.filter(station_id__startswith="rp").exists()
    assert "replay data removed" in out.getvalue()


def test_keep_leaves_the_stations_in_place(monkeypatch, tmp_path) -> None:
    @contextlib.contextmanager
    def csms(url: str | None, **_: object) -> Iterator[tuple[str, str]]:
        yield "ws://127.0.0.1:9", "http://127.0.0.1:9"

    @contextlib.contextmanager
    def agents(**_: object) -> Iterator[None]:
        raise harness.ReplayError("no agents")
        yield

    monkeypatch.setattr(harness, "live_csms", csms)
    monkeypatch.setattr(harness, "simulated_agents", agents)
    with pytest.raises((harness.ReplayError, CommandError)):
        call_command(
            "regulation", "replay", signal=str(SIGNAL), vehicles=2, out=str(tmp_path / "r.csv"), keep=True,
            stdout=io.StringIO(),
        )  # fmt: skip
    assert Station.objects.filter(station_id__startswith="rp").count() == 2
