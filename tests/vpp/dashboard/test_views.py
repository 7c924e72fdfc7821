from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from chargers.models import MeterValue
from fleet.models import Membership, Role, StationOwnership
from fleet.services.vehicles import soc_report
from tests.chargers.factories import StationFactory
from tests.fleet.factories import OrganisationFactory, PlugSessionFactory, UserFactory

pytestmark = pytest.mark.django_db


def _manager_client_with_a_plugged_car() -> tuple[Client, str]:
    # A fleet manager is a member of their organisation, not Django staff; the station is their organisation's.
    manager = UserFactory.create(is_staff=False)
    session = PlugSessionFactory.create(started_at=datetime.now(UTC) - timedelta(minutes=5))
    organisation = session.vehicle.fleet.organisation
    Membership.objects.create(user=manager, organisation=organisation, role=Role.FLEET_MANAGER)
    station = StationFactory.create(station_id=session.station_id, online=True)
    StationOwnership.objects.create(station=station, organisation=organisation)
    now = datetime.now(UTC)
    soc_report(vehicle=session.vehicle, soc_wh=29_000, valid_at=now)
    MeterValue.objects.create(
        station=station,
        timestamp=now,
        received_at=now,
        measurand="Power.Active.Export",
        value=7_000,
        unit="W",
        source="MeterValues",
    )
    client = Client()
    client.force_login(manager)
    return client, station.station_id


def test_it_sends_anonymous_visitors_to_the_login_page() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_it_shows_the_managers_plugged_in_vehicles_and_station_power() -> None:
    # given a fleet manager whose car is plugged in at a station discharging 7 kW
    client, station_id = _manager_client_with_a_plugged_car()
    # when they open the dashboard
    response = client.get("/")
    # then the station, its net power and the car's SoC (29 of 58 kWh) are on the page
    assert response.status_code == 200
    html = response.content.decode()
    assert station_id in html
    assert "-7000 W" in html
    assert "50.0 %" in html


def test_its_json_overview_carries_the_flexibility_envelope() -> None:
    client, _ = _manager_client_with_a_plugged_car()
    data = client.get("/dashboard/overview.json").json()
    assert data["stations_online"] == 1
    assert data["fleet_power_w"] == -7000
    assert len(data["flexibility"]["up_w"]) == 96
    # a half-full 58 kWh car with an 11 kW inverter can discharge right now
    assert data["flexibility"]["up_w"][0] > 0


def test_it_hides_other_organisations_vehicles_and_stations() -> None:
    # given a car and a station of another organisation, and a manager of an organisation of their own
    _manager_client_with_a_plugged_car()
    outsider = UserFactory.create(is_staff=False)
    Membership.objects.create(user=outsider, organisation=OrganisationFactory.create(), role=Role.FLEET_MANAGER)
    client = Client()
    client.force_login(outsider)
    # then the outsider's overview lists neither
    data = client.get("/dashboard/overview.json").json()
    assert (data["vehicles"], data["stations"], data["stations_total"]) == ([], [], 0)


def test_an_operator_sees_every_organisations_stations() -> None:
    # given a car and a station of some organisation, and an operator (Django staff, member of none)
    _, station_id = _manager_client_with_a_plugged_car()
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    # then the operator's overview lists them
    data = client.get("/dashboard/overview.json").json()
    assert [s["station_id"] for s in data["stations"]] == [station_id]
    assert len(data["vehicles"]) == 1
