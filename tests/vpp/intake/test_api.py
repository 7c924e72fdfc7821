"""The regulation intake REST edges (vpp.intake.api): signal values and reserve events, authenticated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from fleet.models import Membership, Role
from markets.models import Product
from markets.regulation.models import RegulationSignal, ReserveDeployment
from tests.fleet.factories import FleetFactory, UserFactory, api_key_for
from tests.markets.regulation.data import HOUR_START, award_for, client_for, regulation_product, user_with
from tests.vpp.stand_ins import award, award_now

pytestmark = pytest.mark.django_db
D = Decimal
URL = "/api/regulation/signal"


@pytest.fixture(autouse=True)
def _products():
    product = regulation_product()  # the seeded PJM products, even after a transactional test flushed them
    award_for(product, HOUR_START, awarded_w=100_000, price="10")  # the hour the fixed-instant values fall in


@pytest.fixture
def utility() -> APIClient:
    return client_for(user_with("utility", "markets.submit_regulation_signal"))


def awarded_in_the_hour(portfolio: str) -> None:
    """RegD awarded to ``portfolio`` for the hour the fixed-instant values fall in."""
    award(regulation_product(), portfolio, HOUR_START, HOUR_START + timedelta(hours=1), 50_000)


def signal(value="0.25", at="2025-07-01T14:00:02Z", product="pjm:reg-d"):
    return {"product": product, "at": at, "value": value}


# --- signal intake -------------------------------------------------------------------------------------------------


def test_signal_intake_refuses_anonymous_callers():
    response = APIClient().post(URL, signal(), format="json")
    assert response.status_code == 401
    assert not RegulationSignal.objects.exists()


def test_signal_intake_refuses_users_without_the_permission():
    response = client_for(user_with("viewer")).post(URL, signal(), format="json")
    assert response.status_code == 403
    assert "submit_regulation_signal" in response.json()["detail"]


def key_client(raw: str, scheme: str = "Api-Key") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {raw}")
    return client


def test_a_utility_posts_a_signal_value_with_its_api_key():
    user = user_with("utility-token", "markets.submit_regulation_signal")
    client = key_client(api_key_for(user, "signal"))
    response = client.post(URL, signal("-0.71157"), format="json")
    assert response.status_code == 201
    row = RegulationSignal.objects.get()
    assert (row.value, row.source, row.received_by, row.at) == (
        D("-0.71157"),
        "utility_api",
        user,
        HOUR_START + timedelta(seconds=2),
    )


def test_a_retransmitted_value_is_acknowledged_once_and_a_conflicting_one_refused(utility):
    assert utility.post(URL, signal(), format="json").status_code == 201
    again = utility.post(URL, signal(), format="json")
    assert again.status_code == 200
    assert again.json()["created"] is False
    conflict = utility.post(URL, signal("0.3"), format="json")
    assert conflict.status_code == 409
    assert "already 0.25000" in conflict.json()["detail"]
    assert RegulationSignal.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (signal("1.5"), "value"),
        (signal("abc"), "value"),
        (signal(at="2025-07-01T14:00:02"), "at"),  # no offset
        (signal(at="yesterday"), "at"),
        (signal(product="pjm:sync-reserve"), "product"),  # not a regulation product
        (signal(product="nope"), "product"),
    ],
)
def test_bad_signal_values_are_refused_with_a_reason(utility, payload, field):
    response = utility.post(URL, payload, format="json")
    assert response.status_code == 400
    assert f"#/{field}" in _pointers(response)
    assert not RegulationSignal.objects.exists()


def test_a_value_stamped_beyond_the_clock_skew_window_is_refused_with_the_window(utility):
    # Given RegD awarded to "default" now
    award_now(regulation_product(), "default")
    # When a value stamped an hour ahead of the server's clock arrives
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = utility.post(URL, signal(at=ahead), format="json")
    # Then it is refused as a problem document naming the reason and the window, and nothing is stored
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert "ahead of this server's clock" in body["detail"]
    assert body["window"]["max_skew_s"] == 5.0
    assert datetime.fromisoformat(body["window"]["latest"]) < datetime.fromisoformat(ahead)
    assert not RegulationSignal.objects.exists()


def test_a_value_within_the_skew_window_is_taken(utility):
    award_now(regulation_product(), "default")
    slightly_ahead = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    assert utility.post(URL, signal(at=slightly_ahead), format="json").status_code == 201


def test_a_portfolio_nobody_awarded_is_refused_with_the_reason(utility):
    # Given no award for portfolio "typo-fleet" (RegD is awarded to "default" only)
    now = datetime.now(UTC).isoformat()
    # When a value for it arrives
    response = utility.post(URL, {**signal(at=now), "portfolio": "typo-fleet"}, format="json")
    # Then it is refused, naming the portfolio and why, and nothing is stored
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert "'typo-fleet' has no regulation capacity of pjm:reg-d awarded" in response.json()["detail"]
    assert not RegulationSignal.objects.exists()


# --- reserve deployments -----------------------------------------------------------------------------------------

RESERVE_URL = "/api/regulation/reserve"


def reserve(event_id="sr-1", power_w=50_000, start="2025-07-01T14:00:00Z", end="2025-07-01T14:30:00Z"):
    return {"portfolio": "default", "event_id": event_id, "power_w": power_w, "start": start, "end": end}


def test_a_reserve_event_is_stored_once_and_a_different_one_under_its_reference_is_refused(utility):
    # Given a utility calling a 50 kW reserve event
    first = utility.post(RESERVE_URL, reserve(), format="json")
    # When the same event is sent again, then a different one under the same reference
    again = utility.post(RESERVE_URL, reserve(), format="json")
    changed = utility.post(RESERVE_URL, reserve(power_w=80_000), format="json")
    # Then it is stored once, answered 201 then 200, and the changed one is refused with the reason
    assert (first.status_code, again.status_code, changed.status_code) == (201, 200, 409)
    assert first.json()["id"] == again.json()["id"]
    assert "sr-1" in changed.json()["detail"]
    assert ReserveDeployment.objects.get().power_w == 50_000


def test_a_reserve_event_without_mw_deploys_the_portfolios_reserve_award(utility):
    # Given 200 kW of PJM synchronized reserve awarded to "default" for 14:00-15:00
    product = Product.objects.get(operator__code="pjm", code="sync-reserve")
    award(product, "default", HOUR_START, HOUR_START + timedelta(hours=1), 200_000)
    body = {"portfolio": "default", "event_id": "sr-9", "start": "2025-07-01T14:05:00Z", "end": "2025-07-01T14:25:00Z"}
    # When the operator calls an event naming neither product nor MW
    response = utility.post(RESERVE_URL, body, format="json")
    # Then the event deploys all 200 kW of the award; served outside an ASGI server, it says why it went nowhere
    assert response.status_code == 201
    answer = response.json()
    assert (answer["product"], answer["power_w"], answer["dispatched"]) == ("pjm:sync-reserve", 200_000, False)
    assert "ASGI" in answer["not_dispatched"]
    assert ReserveDeployment.objects.get().product == product


def test_a_reserve_event_without_mw_on_a_portfolio_holding_no_reserve_is_refused(utility):
    body = {"portfolio": "default", "event_id": "sr-10", "start": "2025-07-01T14:05:00Z", "end": "2025-07-01T14:25:00Z"}
    response = utility.post(RESERVE_URL, body, format="json")
    assert response.status_code == 400
    assert "power_w" in response.json()["detail"]
    assert not ReserveDeployment.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (reserve(end="2025-07-01T13:00:00Z"), "detail"),  # ends before it starts
        (reserve(end="2025-07-01T20:00:00Z"), "detail"),  # longer than any reserve event
        (reserve(power_w=0), "power_w"),
        (reserve(end="2025-07-01T14:30:00"), "end"),  # no UTC offset
        ({"event_id": "x", "power_w": 1}, "end"),
    ],
)
def test_a_bad_reserve_event_gets_a_400_with_the_reason(utility, body, field):
    response = utility.post(RESERVE_URL, body, format="json")
    assert response.status_code == 400
    assert ("#" if field == "detail" else f"#/{field}") in _pointers(response)


def _pointers(response) -> list[str]:
    """The JSON Pointers of a problem document's ``errors`` (RFC 9457): the fields it refused."""
    assert response["Content-Type"] == "application/problem+json"
    return [error["pointer"] for error in response.json()["errors"]]


def test_calling_reserve_needs_the_utility_permission():
    # Given a signed-in user without markets.submit_regulation_signal / When it calls a reserve event
    response = client_for(user_with("viewer")).post(RESERVE_URL, reserve(), format="json")
    # Then it is refused and nothing is stored
    assert response.status_code == 403
    assert APIClient().post(RESERVE_URL, reserve(), format="json").status_code in (401, 403)


# --- API keys: scope and portfolio ---------------------------------------------------------------------------------


def test_a_key_without_scope_signal_is_refused_403_even_for_a_permitted_user():
    # Given a permitted utility whose key only has scope read
    user = user_with("utility-read", "markets.submit_regulation_signal")
    # When it posts a value, then 403 names the missing scope and nothing is stored
    response = key_client(api_key_for(user, "read")).post(URL, signal(), format="json")
    assert response.status_code == 403
    assert "scope 'signal'" in response.json()["detail"]
    assert not RegulationSignal.objects.exists()


def test_a_key_limited_to_a_portfolio_sends_signal_and_reserve_for_it_only():
    # Given a key limited to portfolio "east", sent as a Bearer token
    user = user_with("utility-east", "markets.submit_regulation_signal")
    client = key_client(api_key_for(user, "signal", portfolio="east"), scheme="Bearer")
    # When it posts for "west", then 403 for the signal and for a reserve event, nothing stored
    west = client.post(URL, {**signal(), "portfolio": "west"}, format="json")
    assert west.status_code == 403
    assert "east" in west.json()["detail"]
    reserve = {"portfolio": "west", "event_id": "e1", "power_w": 1000, "end": "2030-01-01T00:00:00Z"}
    assert client.post("/api/regulation/reserve", reserve, format="json").status_code == 403
    assert not RegulationSignal.objects.exists()
    assert not ReserveDeployment.objects.exists()
    # And for "east" (awarded that hour) the value is stored
    awarded_in_the_hour("east")
    assert client.post(URL, {**signal(), "portfolio": "east"}, format="json").status_code == 201


def test_a_utility_sends_for_its_organisations_fleets_only_never_the_whole_aggregator():
    # Given a utility of an organisation with a fleet (no global signal permission)
    fleet = FleetFactory.create()
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=fleet.organisation, role=Role.UTILITY)
    client = key_client(api_key_for(user, "signal"))
    # When it sends for "default" (every tenant's cars), then it is refused and nothing is stored
    response = client.post(URL, {**signal(), "portfolio": "default"}, format="json")
    assert response.status_code == 403
    assert not RegulationSignal.objects.exists()
    # And for its own fleet's portfolio (awarded that hour) the value is stored
    awarded_in_the_hour(f"fleet-{fleet.pk}")
    response = client.post(URL, {**signal(), "portfolio": f"fleet-{fleet.pk}"}, format="json")
    assert response.status_code == 201


def test_a_key_of_one_organisation_never_dispatches_another_organisations_fleet():
    # Given a utility of two organisations, and a key it gave a vendor limited to the first
    first, second = FleetFactory.create(), FleetFactory.create()
    user = UserFactory.create()
    for fleet in (first, second):
        Membership.objects.create(user=user, organisation=fleet.organisation, role=Role.UTILITY)
    client = key_client(api_key_for(user, "signal", organisation=first.organisation))
    for fleet in (first, second):
        awarded_in_the_hour(f"fleet-{fleet.pk}")
    # When the key sends for the second organisation's fleet, then it is refused and nothing is stored
    response = client.post(URL, {**signal(), "portfolio": f"fleet-{second.pk}"}, format="json")
    assert response.status_code == 403
    assert not RegulationSignal.objects.exists()
    # And for the first organisation's fleet the value is stored
    assert client.post(URL, {**signal(), "portfolio": f"fleet-{first.pk}"}, format="json").status_code == 201
