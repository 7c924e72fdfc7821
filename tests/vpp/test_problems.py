"""One error format for the whole API: RFC 9457 problem details (``application/problem+json``).

The walk below takes every ``/api/`` route from the URL resolver (a new endpoint is walked without being listed) and
provokes its errors: no credentials (401/403), an unknown object (404), a method it does not take (405), an empty
body (400 where it writes). Every answer of 400 or more must be a problem document: ``type``, ``title`` (the status
phrase when ``type`` is ``about:blank``, RFC 9457 section 4.2.1), ``status`` equal to the HTTP status, a ``detail``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from tests.fleet.factories import UserFactory
from tests.markets.conftest import BidFactory
from vpp import problems

PROBLEM = "application/problem+json"
PUBLIC = {"api/schema/", "api/docs/", "api/redoc/"}  # the API's description: public, never an error
UNKNOWN = {"pk": "999999", "station_id": "no-such-station", "site": "no-such-site"}


def _routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[str]:
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, route)
        elif "format" not in p.pattern.regex.groupindex:
            yield route


def _url(route: str) -> str:
    """A route (``api/^markets/bids/(?P<pk>[^/.]+)/transition/$`` or ``api/stations/<str:station_id>/call``) as
    a URL naming objects that do not exist."""
    route = route.replace("^", "").replace("$", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: UNKNOWN[m.group(1)], route)
    route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: UNKNOWN[m.group(1)], route)
    return "/" + route


API_ROUTES = sorted(r for r in _routes(get_resolver().url_patterns) if r.startswith("api/") and r not in PUBLIC)
NAMES_AN_OBJECT = {r for r in API_ROUTES if "<" in r}


def assert_problem(response: Any) -> dict[str, Any]:
    where = f"{response.request['REQUEST_METHOD']} {response.request['PATH_INFO']} -> {response.status_code}"
    assert response["Content-Type"] == PROBLEM, where
    body = response.json()
    assert body["type"] == "about:blank", where
    assert body["title"] == HTTPStatus(response.status_code).phrase, where
    assert body["status"] == response.status_code, where
    assert isinstance(body["detail"], str), where
    assert body["detail"], where
    return body


def _errors(client: Client, url: str) -> Iterator[Any]:
    for method in ("get", "post", "put", "patch", "delete"):
        response = getattr(client, method)(url, {}, content_type="application/json")
        if response.status_code >= 400:
            yield response


def test_the_walk_finds_the_api() -> None:
    # Given the resolver's routes; then the walk covers the API's families, the station call among them
    assert len(API_ROUTES) > 20
    assert {"api/stations/<str:station_id>/call", "api/regulation/signal"} <= set(API_ROUTES)


@pytest.mark.django_db
@pytest.mark.parametrize("route", API_ROUTES)
def test_every_api_error_is_a_problem_document(route: str) -> None:
    # Given an anonymous caller and an operator (who may use every endpoint)
    anonymous, operator = APIClient(), APIClient()
    operator.force_login(UserFactory.create(is_staff=True))
    url = _url(route)
    # When each calls the route with every method, an empty body and unknown objects
    refused = list(_errors(anonymous, url))
    failed = list(_errors(operator, url))
    # Then every error is a problem document, and there were errors to check
    assert refused, f"{url}: anonymous calls were not refused"
    for response in refused + failed:
        assert_problem(response)
    assert {r.status_code for r in refused} <= {401, 403, 405}
    # And an unknown object is 404, never 400 (nothing about its body matters while the object does not exist)
    if route in NAMES_AN_OBJECT:
        assert {r.status_code for r in failed} <= {404, 405}, url
        assert 404 in {r.status_code for r in failed}, url


@pytest.mark.django_db
def test_an_unknown_api_path_is_a_problem_and_a_page_is_not() -> None:
    # Given a signed-in user; when they ask for an API path and a page that do not exist
    client = Client()
    client.force_login(UserFactory.create())
    api, page = client.get("/api/no-such-endpoint/"), client.get("/no-such-page/")
    # Then the API answers a problem document, the page Django's own 404 page
    assert api.status_code == page.status_code == 404
    assert assert_problem(api)["instance"] == "/api/no-such-endpoint/"
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_an_unknown_bid_is_404_for_a_bidding_admin_too() -> None:
    # Given a bidding admin's session (whose bids are scoped to their organisations) and a bid of another portfolio
    from fleet.models import Membership, Role
    from tests.fleet.factories import OrganisationFactory

    admin = UserFactory.create()
    Membership.objects.create(user=admin, organisation=OrganisationFactory.create(), role=Role.BIDDING_ADMIN)
    foreign = BidFactory.create(portfolio="fleet-424242")
    client = APIClient()
    client.force_login(admin)
    # When they transition a bid that does not exist, one that is not theirs, and one named by garbage
    answers = [
        client.post(f"/api/markets/bids/{bid}/transition/", {"to_status": "approved"}, format="json")
        for bid in (999, foreign.pk, "abc")
    ]
    # Then each is 404, as a problem document
    assert [a.status_code for a in answers] == [404, 404, 404]
    for answer in answers:
        assert assert_problem(answer)["code"] == "not_found"


def test_a_csrf_refusal_under_api_is_a_problem() -> None:
    # Given a request to an API path that failed Django's CSRF check
    request = RequestFactory().post("/api/stations/x/call")
    # When Django's CSRF failure view answers it
    response = problems.csrf_failure(request, reason="CSRF cookie not set.")
    # Then it is a problem document naming the reason
    assert response["Content-Type"] == PROBLEM
    assert response.status_code == 403
    assert "CSRF cookie not set." in response.content.decode()


def test_a_server_error_under_api_is_a_problem_and_a_page_is_not() -> None:
    # Given requests to an API path and a page; when Django's 500 handler answers them
    api = problems.server_error(RequestFactory().get("/api/fleet/fleets/"))
    page = problems.server_error(RequestFactory().get("/"))
    # Then the API gets a problem document, the page Django's own
    assert (api.status_code, api["Content-Type"]) == (500, PROBLEM)
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_a_validation_error_points_at_each_refused_field() -> None:
    # Given an operator; when they set a departure with a bad target and no time
    operator = APIClient()
    operator.force_login(UserFactory.create(is_staff=True))
    from tests.fleet.factories import VehicleFactory

    vehicle = VehicleFactory.create()
    response = operator.post(f"/api/fleet/vehicles/{vehicle.pk}/departure/", {"target_soc_pct": 150}, format="json")
    # Then the problem document lists each field with a JSON Pointer into the body (RFC 9457 section 3, RFC 6901)
    body = assert_problem(response)
    assert response.status_code == 400
    assert body["code"] == "invalid"
    assert {e["pointer"] for e in body["errors"]} == {"#/departure_at", "#/target_soc_pct"}
