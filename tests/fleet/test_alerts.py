"""Fleet alerts: each condition raised once when it starts, cleared once when it ends, never again per cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chargers.models import DerAlarm
from fleet.models import AlertKind, FleetAlert, PlanSource, StationOwnership
from fleet.services.alerts import alerts_sync
from fleet.services.vehicles import departure_plan_set, soc_report
from tests.chargers.factories import StationFactory
from tests.fleet.factories import PlugSessionFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _plugged_car(soc_pct: float, *, online: bool = True):
    session = PlugSessionFactory.create(started_at=NOW - timedelta(hours=1))
    vehicle = session.vehicle
    station = StationFactory.create(station_id=session.station_id, online=online)
    StationOwnership.objects.create(station=station, organisation=vehicle.fleet.organisation)
    soc_report(vehicle=vehicle, soc_wh=round(vehicle.usable_capacity_wh * soc_pct / 100), valid_at=NOW)
    return vehicle, station


def _open(kind: str) -> list[FleetAlert]:
    return list(FleetAlert.objects.filter(kind=kind, cleared_at__isnull=True))


def test_a_car_near_its_floor_is_raised_once_however_often_the_sync_runs() -> None:
    # Given a plugged-in car 2 points above its 20 % floor
    vehicle, _ = _plugged_car(22)
    # When the sync runs three times
    for minute in range(3):
        alerts_sync(now=NOW + timedelta(minutes=minute))
    # Then one alert row exists, open, raised at the first run
    rows = list(FleetAlert.objects.filter(kind=AlertKind.NEAR_FLOOR))
    assert len(rows) == 1
    assert rows[0].vehicle_id == vehicle.pk
    assert rows[0].raised_at == NOW
    assert rows[0].cleared_at is None


def test_it_clears_once_when_the_condition_ends_and_raises_a_new_row_when_it_returns() -> None:
    # Given a car near its floor, raised
    vehicle, _ = _plugged_car(22)
    alerts_sync(now=NOW)
    # When the car charges well above its floor and the sync runs twice
    soc_report(vehicle=vehicle, soc_wh=vehicle.usable_capacity_wh // 2, valid_at=NOW + timedelta(minutes=1))
    first = alerts_sync(now=NOW + timedelta(minutes=2))
    second = alerts_sync(now=NOW + timedelta(minutes=3))
    # Then the alert was cleared by the first run only
    assert (first.cleared, second.cleared) == (1, 0)
    row = FleetAlert.objects.get(kind=AlertKind.NEAR_FLOOR)
    assert row.cleared_at == NOW + timedelta(minutes=2)
    # And when it drops near the floor again, a second row is raised (the first stays cleared)
    soc_report(vehicle=vehicle, soc_wh=round(vehicle.usable_capacity_wh * 0.21), valid_at=NOW + timedelta(minutes=4))
    alerts_sync(now=NOW + timedelta(minutes=5))
    assert FleetAlert.objects.filter(kind=AlertKind.NEAR_FLOOR).count() == 2
    assert len(_open(AlertKind.NEAR_FLOOR)) == 1


def test_a_value_hovering_on_the_threshold_does_not_raise_and_clear_every_cycle() -> None:
    # Given a car raised at 24 % (4 points above the floor, within the 5-point raise band)
    vehicle, _ = _plugged_car(24)
    alerts_sync(now=NOW)
    # When it moves to 26 % (past the raise band, inside the 8-point clear band)
    soc_report(vehicle=vehicle, soc_wh=round(vehicle.usable_capacity_wh * 0.26), valid_at=NOW + timedelta(minutes=1))
    result = alerts_sync(now=NOW + timedelta(minutes=2))
    # Then the alert stays open
    assert result.cleared == 0
    assert len(_open(AlertKind.NEAR_FLOOR)) == 1


def test_an_offline_station_and_a_grid_trip_are_raised_and_cleared_with_the_station() -> None:
    # Given a car on a station that is offline and reported a DER alarm that has not ended
    _, station = _plugged_car(60, online=False)
    DerAlarm.objects.create(
        station=station, control_type="FreqDroop", grid_event_fault="OverFrequency", timestamp=NOW, received_at=NOW
    )
    alerts_sync(now=NOW)
    assert [a.subject for a in _open(AlertKind.STATION_OFFLINE)] == [f"station:{station.station_id}"]
    assert len(_open(AlertKind.TRIP)) == 1
    # When it comes back and reports the alarm ended
    station.online = True
    station.save(update_fields=["online"])
    DerAlarm.objects.create(
        station=station,
        control_type="FreqDroop",
        alarm_ended=True,
        timestamp=NOW + timedelta(minutes=1),
        received_at=NOW + timedelta(minutes=1),
    )
    alerts_sync(now=NOW + timedelta(minutes=2))
    # Then both are cleared
    assert _open(AlertKind.STATION_OFFLINE) == []
    assert _open(AlertKind.TRIP) == []


def test_a_hot_pack_and_a_departure_target_out_of_reach_are_raised() -> None:
    # Given a hot car at 30 % leaving in 30 min for an 90 % target (an 11 kW charger cannot make it)
    vehicle, _ = _plugged_car(30)
    vehicle.pack_temperature_c = 47.0
    vehicle.save(update_fields=["pack_temperature_c"])
    departure_plan_set(
        vehicle=vehicle,
        departure_at=NOW + timedelta(minutes=30),
        target_soc_pct=90,
        source=PlanSource.FLEET_MANAGER,
        known_at=NOW,
    )
    # When the sync runs
    alerts_sync(now=NOW)
    # Then both are open, naming the car
    assert len(_open(AlertKind.OVER_TEMPERATURE)) == 1
    [risk] = _open(AlertKind.DEPARTURE_AT_RISK)
    assert vehicle.name in risk.message
    assert "90 % target" in risk.message
