"""Fleet REST API: authenticated, scoped to the user's organisation, validated input."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.models import DeparturePlan, Membership, PlanSource, Role
from fleet.services import vehicles
from tests.fleet.factories import FleetFactory, PlugSessionFactory, UserFactory, VehicleFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(django_capture_on_commit_callbacks) -> dict[str, object]:
    user = UserFactory.create()
    mine = FleetFactory.create()
    Membership.objects.create(user=user, organisation=mine.organisation, role=Role.FLEET_MANAGER)
    theirs = FleetFactory.create()
    session = PlugSessionFactory.create(
        vehicle=VehicleFactory.create(fleet=mine), started_at=timezone.now() - timedelta(hours=1)
    )
    with django_capture_on_commit_callbacks(execute=True):  # the refresh task runs after commit
        vehicles.soc_report(vehicle=session.vehicle, soc_wh=30_000, valid_at=timezone.now())
    other = VehicleFactory.create(fleet=theirs)
    client = APIClient()
    client.force_authenticate(user)
    return {"client": client, "vehicle": session.vehicle, "other": other, "fleet": mine}


def test_it_refuses_anonymous_calls() -> None:
    response = APIClient().get("/api/fleet/vehicles/")
    assert response.status_code in (401, 403)


def test_a_user_sees_only_their_organisations_vehicles(setup: dict) -> None:
    client: APIClient = setup["client"]
    response = client.get("/api/fleet/vehicles/")
    assert response.status_code == 200
    ids = [v["id"] for v in response.json()["results"]]
    assert ids == [setup["vehicle"].id]
    assert response.json()["results"][0]["state"]["soc_wh"] == 30_000
    assert client.get(f"/api/fleet/vehicles/{setup['other'].id}/").status_code == 404


def test_the_fleet_manager_sets_a_departure_and_bad_input_is_refused(setup: dict) -> None:
    client: APIClient = setup["client"]
    url = f"/api/fleet/vehicles/{setup['vehicle'].id}/departure/"
    leave = (timezone.now() + timedelta(hours=6)).isoformat()
    response = client.post(url, {"departure_at": leave, "target_soc_pct": 85}, format="json")
    assert response.status_code == 201
    plan = DeparturePlan.objects.get(vehicle=setup["vehicle"])
    assert (plan.source, plan.target_soc_pct) == (PlanSource.FLEET_MANAGER, 85)
    bad = client.post(url, {"departure_at": leave, "target_soc_pct": 150}, format="json")
    assert bad.status_code == 400
    assert "#/target_soc_pct" in [error["pointer"] for error in bad.json()["errors"]]
    other = client.post(
        f"/api/fleet/vehicles/{setup['other'].id}/departure/",
        {"departure_at": leave, "target_soc_pct": 80},
        format="json",
    )
    assert other.status_code == 404


def test_the_floor_is_settable_within_bounds(setup: dict) -> None:
    client: APIClient = setup["client"]
    url = f"/api/fleet/vehicles/{setup['vehicle'].id}/"
    assert client.patch(url, {"mobility_floor_pct": 30}, format="json").json()["effective_floor_pct"] == 30
    assert client.patch(url, {"mobility_floor_pct": 130}, format="json").status_code == 400
    fleet_url = f"/api/fleet/fleets/{setup['fleet'].id}/"
    assert client.patch(fleet_url, {"mobility_floor_pct": 25}, format="json").status_code == 200


def test_fleet_flexibility_covers_plugged_in_vehicles_by_node(setup: dict) -> None:
    client: APIClient = setup["client"]
    response = client.get("/api/fleet/flexibility/", {"intervals": 8, "hold_s": 1800})
    assert response.status_code == 200
    body = response.json()
    assert body["vehicles"] == 1
    assert len(body["total"]["up_w"]) == 8
    assert body["total"]["hold_s"] == 1800
    assert set(body["by_node"]) == {"default"}
    assert body["total"]["up_w"][0] > 0
    assert client.get("/api/fleet/flexibility/", {"intervals": 0}).status_code == 400
    assert client.get("/api/fleet/flexibility/", {"fleet": 999_999}).status_code == 400


def test_vehicle_flexibility_and_soc_entry(setup: dict) -> None:
    client: APIClient = setup["client"]
    vid = setup["vehicle"].id
    assert client.post(f"/api/fleet/vehicles/{vid}/soc/", {"soc_pct": 50}, format="json").status_code == 201
    body = client.get(f"/api/fleet/vehicles/{vid}/flexibility/", {"intervals": 4}).json()
    assert body["plugged_in"] is True
    assert body["up_energy_wh"][0] == int((29_000 - 11_600) * 0.9)
    assert client.post(f"/api/fleet/vehicles/{vid}/soc/", {"soc_pct": -3}, format="json").status_code == 400


def test_a_duplicate_identifier_is_refused_with_a_reason(setup: dict) -> None:
    operator = APIClient()
    operator.force_authenticate(UserFactory.create(is_staff=True))
    url = f"/api/fleet/vehicles/{setup['vehicle'].id}/"
    response = operator.patch(url, {"id_token": setup["other"].id_token}, format="json")
    assert response.status_code == 400
    assert "already exists" in _refusal(response, "id_token")


@pytest.mark.parametrize("field", ["id_token", "evccid", "vin"])
def test_only_an_operator_changes_a_vehicles_identity(setup: dict, field: str) -> None:
    # given a fleet manager's vehicle; when the manager sends a new identifier, then it is refused and unchanged
    vehicle = setup["vehicle"]
    url = f"/api/fleet/vehicles/{vehicle.id}/"
    before = getattr(vehicle, field)
    response = setup["client"].patch(url, {field: "CLAIMED0001"}, format="json")
    assert response.status_code == 400
    assert "operator" in _refusal(response, field)
    vehicle.refresh_from_db()
    assert getattr(vehicle, field) == before
    # the unchanged value sent back (a GET-modify-PUT client) passes, with the other changes
    same = setup["client"].patch(url, {field: before, "name": "renamed"}, format="json")
    assert same.status_code == 200, same.json()
    # an operator changes it
    operator = APIClient()
    operator.force_authenticate(UserFactory.create(is_staff=True))
    assert operator.patch(url, {field: "CLAIMED0001"}, format="json").status_code == 200
    vehicle.refresh_from_db()
    assert getattr(vehicle, field) == "CLAIMED0001"


def test_the_weekly_schedule_is_replaced_and_validated(setup: dict) -> None:
    client: APIClient = setup["client"]
    url = f"/api/fleet/vehicles/{setup['vehicle'].id}/schedule/"
    rows = [
        {"weekday": 0, "departure_time": "07:30", "target_soc_pct": 80},
        {"weekday": 4, "departure_time": "06:00", "target_soc_pct": 90},
    ]
    assert client.put(url, rows, format="json").status_code == 200
    got = client.get(url).json()
    assert [(r["weekday"], r["departure_time"]) for r in got] == [(0, "07:30:00"), (4, "06:00:00")]
    twice = client.put(url, [*rows, {"weekday": 0, "departure_time": "09:00", "target_soc_pct": 50}], format="json")
    assert twice.status_code == 400
    assert "weekday" in twice.json()["detail"]
    assert (
        client.put(url, [{"weekday": 9, "departure_time": "09:00", "target_soc_pct": 50}], format="json").status_code
        == 400
    )
    assert len(client.get(url).json()) == 2


def _refusal(response, field: str) -> str:
    """The messages a problem document (RFC 9457) gives for one field of the body."""
    return " ".join(e["detail"] for e in response.json()["errors"] if e["pointer"] == f"#/{field}")


@pytest.mark.parametrize("ago", [timedelta(seconds=1), timedelta(days=3)])
def test_it_refuses_a_departure_in_the_past(setup: dict, ago: timedelta) -> None:
    # Given a fleet manager's vehicle
    url = f"/api/fleet/vehicles/{setup['vehicle'].id}/departure/"
    # When the manager sets a departure that has already passed
    past = (timezone.now() - ago).isoformat()
    response = setup["client"].post(url, {"departure_at": past, "target_soc_pct": 80}, format="json")
    # Then it is refused with the reason, and no plan is stored
    assert response.status_code == 400
    assert "not in the future" in _refusal(response, "departure_at")
    assert not DeparturePlan.objects.filter(vehicle=setup["vehicle"]).exists()
