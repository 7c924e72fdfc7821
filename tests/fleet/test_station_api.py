"""``POST /api/stations/<id>/call`` and the audit trail: who may command which station, and every attempt recorded.

The station's side is ``layer`` (tests/fleet/conftest.py), a fake channel layer standing in for the server process
that holds its socket: it records what reaches "the socket" and answers ``{"status": "Accepted"}``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from chargers.models import Station, StationCommand
from fleet.models import ApiKey, ApiScope, Membership, Organisation, Role, StationOwnership
from tests.chargers.factories import StationFactory
from tests.fleet.conftest import ANSWER
from tests.fleet.factories import OrganisationFactory, UserFactory

pytestmark = pytest.mark.django_db

START = {"idToken": {"idToken": "TAG-1", "type": "ISO14443"}, "remoteStartId": 7, "evseId": 1}
DER = {
    "isDefault": False,
    "controlId": "droop-7",
    "controlType": "FreqDroop",
    "freqDroop": {"priority": 1, "overFreq": 50.2, "underFreq": 49.8, "overDroop": 4.0, "underDroop": 4.0,
                  "responseTime": 0.5},
}  # fmt: skip


def _station(organisation: Organisation, station_id: str) -> Station:
    station = StationFactory.create(station_id=station_id, ocpp_version="2.1", channel_name=f"socket.{station_id}")
    StationOwnership.objects.create(station=station, organisation=organisation)
    return station


@pytest.fixture
def world() -> dict[str, Any]:
    mine, theirs = OrganisationFactory.create(), OrganisationFactory.create()
    manager = UserFactory.create()
    Membership.objects.create(user=manager, organisation=mine, role=Role.FLEET_MANAGER)
    return {
        "mine": mine,
        "manager": manager,
        "own": _station(mine, "own-1"),
        "other": _station(theirs, "other-1"),
        "operator": UserFactory.create(is_staff=True),
    }


def _client(user: Any, token: Any = None) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user, token=token)
    return client


def _call(client: APIClient, station_id: str, action: str, payload: dict[str, Any]) -> Any:
    return client.post(f"/api/stations/{station_id}/call", {"action": action, "payload": payload}, format="json")


@pytest.mark.django_db(transaction=True)  # the service writes its audit row through database_sync_to_async
def test_a_fleet_manager_commands_their_own_station_and_the_call_is_audited(world, layer):
    # Given a fleet manager of the organisation that owns a connected station
    # When they start a transaction on it
    response = _call(_client(world["manager"]), "own-1", "RequestStartTransaction", START)
    # Then the station got the request and its answer comes back
    assert response.status_code == 200
    assert response.json() == {"station_id": "own-1", "action": "RequestStartTransaction", "payload": ANSWER}
    assert [(channel, m["action"], m["payload"]) for channel, m in layer.sent] == [
        ("socket.own-1", "RequestStartTransaction", START)
    ]
    # And one audit row says who sent what and what the station answered
    row = StationCommand.objects.get()
    assert (row.station_id, row.user_id, row.actor_label) == (
        world["own"].pk,
        world["manager"].pk,
        world["manager"].username,
    )
    assert (row.action, row.payload, row.outcome, row.answer) == ("RequestStartTransaction", START, "answered", ANSWER)
    assert row.answered_at is not None
    assert row.answered_at >= row.requested_at


def test_another_organisations_station_is_not_found_and_nothing_is_sent(world, layer):
    # Given a fleet manager and a station another organisation owns, and one that does not exist
    client = _client(world["manager"])
    # When they command either
    other = _call(client, "other-1", "RequestStartTransaction", START)
    missing = _call(client, "no-such-1", "RequestStartTransaction", START)
    # Then both are "not found" alike (existence does not leak), nothing is sent and nothing recorded
    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json()["detail"] == "no station 'other-1'"
    assert layer.sent == []
    assert not StationCommand.objects.exists()


def test_an_operator_only_action_by_a_fleet_manager_is_refused_audited_and_not_sent(world, layer):
    # When a fleet manager sends a DER control to their own station
    response = _call(_client(world["manager"]), "own-1", "SetDERControl", DER)
    # Then it is refused with the reason, nothing reaches the station
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["action"]) == (403, "SetDERControl")
    assert "operator-only" in body["detail"]
    assert "grid protection" in body["detail"]
    assert layer.sent == []
    # And the refusal is in the audit trail
    row = StationCommand.objects.get()
    assert (row.station_id, row.user_id, row.action, row.outcome) == (
        world["own"].pk,
        world["manager"].pk,
        "SetDERControl",
        "refused",
    )
    assert "operator-only" in row.error


def test_a_member_who_is_not_a_fleet_manager_sees_the_station_but_commands_nothing(world, layer):
    # Given a bidding admin of the owning organisation
    bidder = UserFactory.create()
    Membership.objects.create(user=bidder, organisation=world["mine"], role=Role.BIDDING_ADMIN)
    # When they send an everyday command, then it is refused (and recorded), not sent
    response = _call(_client(bidder), "own-1", "RequestStartTransaction", START)
    assert response.status_code == 403
    assert layer.sent == []
    assert StationCommand.objects.get().outcome == "refused"


@pytest.mark.django_db(transaction=True)
def test_an_operator_may_send_operator_only_actions_to_any_station(world, layer):
    response = _call(_client(world["operator"]), "other-1", "SetDERControl", DER)
    assert response.status_code == 200
    assert [m["action"] for _, m in layer.sent] == ["SetDERControl"]
    assert StationCommand.objects.get().outcome == "answered"


def test_anonymous_callers_are_refused(world, layer):
    response = APIClient().post("/api/stations/own-1/call", {"action": "Reset", "payload": {}}, format="json")
    assert response.status_code == 401
    assert layer.sent == []


def test_an_api_key_without_the_command_scope_is_refused(world, layer):
    # Given a key of the fleet manager that may only read
    key, _ = ApiKey.objects.create_key(name="reader", user=world["manager"], scopes=[ApiScope.READ])
    # When it sends an everyday command to the manager's own station, then it is refused and nothing is sent
    response = _call(_client(world["manager"], token=key), "own-1", "RequestStartTransaction", START)
    assert response.status_code == 403
    assert "command" in response.json()["detail"]
    assert layer.sent == []


@pytest.mark.django_db(transaction=True)
def test_an_api_key_with_the_command_scope_may_and_is_named_in_the_audit(world, layer):
    key, _ = ApiKey.objects.create_key(name="ops-bot", user=world["manager"], scopes=[ApiScope.COMMAND])
    response = _call(_client(world["manager"], token=key), "own-1", "RequestStartTransaction", START)
    assert response.status_code == 200
    assert StationCommand.objects.get().actor_label == f"{world['manager'].username} (API key {key.prefix})"


def test_a_body_without_an_action_is_a_bad_request(world, layer):
    response = _client(world["manager"]).post("/api/stations/own-1/call", {"payload": {}}, format="json")
    assert response.status_code == 400
    assert layer.sent == []


# --- The audit trail -------------------------------------------------------------------------------------------------


def _audit(station: Station, action: str, when: str) -> StationCommand:
    return StationCommand.objects.create(
        station=station,
        station_ident=station.station_id,
        actor_label="someone",
        action=action,
        outcome="answered",
        requested_at=when,
    )


def test_the_audit_trail_is_scoped_to_the_callers_stations_newest_first(world):
    # Given commands on the manager's station and on another organisation's
    _audit(world["own"], "GetVariables", "2026-01-15T10:00:00Z")
    _audit(world["own"], "TriggerMessage", "2026-01-15T11:00:00Z")
    _audit(world["other"], "Reset", "2026-01-15T12:00:00Z")
    manager, operator = _client(world["manager"]), _client(world["operator"])
    # When the manager lists them, then only their station's, newest first
    mine = manager.get("/api/station-commands/").json()["results"]
    assert [r["action"] for r in mine] == ["TriggerMessage", "GetVariables"]
    assert manager.get("/api/stations/own-1/commands").json()["count"] == 2
    # And another organisation's station is not found
    assert manager.get("/api/stations/other-1/commands").status_code == 404
    # While an operator sees everything, any station's
    assert [r["action"] for r in operator.get("/api/station-commands/").json()["results"]] == [
        "Reset",
        "TriggerMessage",
        "GetVariables",
    ]
    assert operator.get("/api/stations/other-1/commands").json()["results"][0]["station_id"] == "other-1"
    # And nobody signed in sees anything
    assert APIClient().get("/api/station-commands/").status_code == 401


def test_a_session_post_without_the_csrf_token_is_refused(world, layer):
    # Given an operator signed in through the browser session (a client that enforces CSRF like a real browser)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(world["operator"])
    # When it posts without the CSRF token, then the call is refused before the body is read
    refused = browser.post("/api/stations/own-1/call", {}, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    # And with the cookie's token the request passes the check and is judged on its body
    browser.get("/admin/")  # its logout form sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    judged = browser.post(
        "/api/stations/own-1/call", {}, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert judged.status_code == 400
    assert layer.sent == []
