"""The permission matrix: every URL and WebSocket route, who may read it and who may write through it.

``MATRIX`` has one row per route (the resolver's route string, format-suffix duplicates and the admin left out);
``test_every_route_has_a_row`` fails on a route without a row and on a row for a route that is gone, so a new
endpoint cannot ship without deciding who may use it. Each HTTP row is run as five callers, for reading (GET) and,
when the row writes, for writing:

* ``anon``: nobody signed in;
* ``owner``: a member of the owning organisation (A) with the row's role;
* ``other``: a member of another organisation (B) with that same role;
* ``wrong``: a member of A with a role that is not the row's (``wrong_role``);
* ``operator``: Django staff (not superuser).

Expectations: ``OK`` (2xx), ``ALLOWED`` (a write got past the permission checks: neither 401/403/404 nor the login
page; validation may still answer 400/409), ``SEES``/``BLIND`` (200, and the owner's object is/is not in the list
or the page), ``NOT_FOUND`` (404), ``FORBIDDEN`` (403), ``DENIED`` (401 or 403: API without credentials), ``LOGIN``
(302 to the login page), ``NOT_ALLOWED`` (405), ``MOVED`` (302 elsewhere: an old address), ``ELSEWHERE`` (checked in
the route's own tests).

To add a route: add a ``Row`` keyed by its route string as ``test_every_route_has_a_row`` prints it, with the
fixture object its URL needs (``url`` is formatted with ``World``'s ids), the owner's role, a wrong role, the read
expectations and, if it writes, the write method, body and expectations.

Why one module: the table, the world it runs against and the check of its completeness are one review unit; split,
a route could gain a row in one file and lose its test in another.

Rows marked ``pending`` record the CURRENT behaviour of routes another branch of issue 12 is rebuilding; update
them when that work is merged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.models import ApiKey, ApiScope, Fleet, Membership, Organisation, Role, StationOwnership, Vehicle
from fleet.selectors import fleet_portfolio
from markets.models import Award, Bid, DepotSite
from markets.regulation.models import PerformanceScoreRecord, Settlement, SettlementLine
from tests.chargers.factories import StationFactory
from tests.fleet.factories import FleetFactory, OrganisationFactory, UserFactory, VehicleFactory
from tests.markets.conftest import BidFactory
from vpp.discovery import app_modules
from vpp.utility.models import UtilityProgram

# --- expectations ---------------------------------------------------------------------------------------------------

OK, ALLOWED, SEES, BLIND = "ok", "allowed", "sees", "blind"
NOT_FOUND, FORBIDDEN, DENIED, LOGIN, NOT_ALLOWED = "404", "403", "401/403", "login", "405"
MOVED = "moved"  # 302 to another page (not the login page): an old address
ELSEWHERE = "elsewhere"  # checked in the route's own tests (named in the row's note), not from this table
ACTORS = ("anon", "owner", "other", "wrong", "operator")
FM, BA, UT = Role.FLEET_MANAGER, Role.BIDDING_ADMIN, Role.UTILITY
NONE = "none"  # a signed-in user without any membership


def expect(anon: str, owner: str, other: str, wrong: str, operator: str) -> dict[str, str]:
    return dict(zip(ACTORS, (anon, owner, other, wrong, operator), strict=True))


# Shapes most rows share.
API_OBJECT = expect(DENIED, OK, NOT_FOUND, FORBIDDEN, OK)
API_OBJECT_WRITE = expect(DENIED, ALLOWED, NOT_FOUND, FORBIDDEN, ALLOWED)
API_LIST = expect(DENIED, SEES, BLIND, FORBIDDEN, SEES)
API_SCOPED_LIST = expect(DENIED, SEES, BLIND, BLIND, SEES)  # wrong role: scoping leaves the list empty
PAGE_SCOPED = expect(LOGIN, SEES, BLIND, BLIND, SEES)
PUBLIC = expect(OK, OK, OK, OK, OK)


@dataclass(frozen=True)
class Row:
    url: str = ""  # formatted with World's attributes, e.g. "/api/fleet/vehicles/{vehicle}/"
    api: bool = True
    role: str = FM  # the owner's role in organisation A
    wrong_role: str = UT
    read: dict[str, str] | None = None  # None: the route has no read (GET is not the way to use it)
    write: dict[str, str] | None = None
    method: str = "post"
    body: Any = None  # a dict, or a callable World -> dict
    probe: str = ""  # for SEES/BLIND: the World attribute whose id (JSON lists) or marker text (pages) is looked for
    pending: str = ""  # another branch is rebuilding this route: the row records today's behaviour
    ws: bool = False


MATRIX: dict[str, Row] = {
    # -- public API description
    "api/schema/": Row("/api/schema/", read=PUBLIC),
    "api/docs/": Row("/api/docs/", read=PUBLIC),
    "api/redoc/": Row("/api/redoc/", read=PUBLIC),
    "api/": Row("/api/", read=expect(DENIED, OK, OK, OK, OK)),
    # -- fleet: fleet managers of the owning organisation (keys: read / fleet:write)
    "api/fleet/fleets/": Row("/api/fleet/fleets/", read=API_LIST, probe="fleet"),
    "api/fleet/fleets/<pk>/": Row(
        "/api/fleet/fleets/{fleet}/",
        read=API_OBJECT,
        write=API_OBJECT_WRITE,
        method="patch",
        body={"mobility_floor_pct": 25},
    ),
    "api/fleet/vehicles/": Row("/api/fleet/vehicles/", read=API_LIST, probe="vehicle"),
    "api/fleet/vehicles/<pk>/": Row(
        "/api/fleet/vehicles/{vehicle}/",
        read=API_OBJECT,
        write=API_OBJECT_WRITE,
        method="patch",
        body={"name": "renamed"},
    ),
    "api/fleet/vehicles/<pk>/departure/": Row(
        "/api/fleet/vehicles/{vehicle}/departure/",
        write=API_OBJECT_WRITE,
        body=lambda w: {"departure_at": (timezone.now() + timedelta(hours=5)).isoformat(), "target_soc_pct": 80},
    ),
    "api/fleet/vehicles/<pk>/flexibility/": Row("/api/fleet/vehicles/{vehicle}/flexibility/", read=API_OBJECT),
    "api/fleet/vehicles/<pk>/schedule/": Row(
        "/api/fleet/vehicles/{vehicle}/schedule/", read=API_OBJECT, write=API_OBJECT_WRITE, method="put", body=[]
    ),
    "api/fleet/vehicles/<pk>/soc/": Row(
        "/api/fleet/vehicles/{vehicle}/soc/", write=API_OBJECT_WRITE, body={"soc_pct": 50}
    ),
    # flexibility: fleet managers, bidding admins and utilities; scoped totals (no ids to probe)
    "api/fleet/flexibility/": Row(
        "/api/fleet/flexibility/", role=UT, wrong_role=NONE, read=expect(DENIED, OK, OK, FORBIDDEN, OK)
    ),
    # -- markets: bidding admins of the portfolio's organisation (keys: read only)
    "api/markets/bids/": Row("/api/markets/bids/", role=BA, wrong_role=FM, read=API_LIST, probe="bid"),
    "api/markets/bids/<pk>/": Row("/api/markets/bids/{bid}/", role=BA, wrong_role=FM, read=API_OBJECT),
    "api/markets/bids/<pk>/edit/": Row(
        "/api/markets/bids/{bid}/edit/",
        role=BA,
        wrong_role=FM,
        write=API_OBJECT_WRITE,
        body={"quantity_w": 400_000, "price": "11.00", "version": 1},
    ),
    "api/markets/bids/<pk>/events/": Row("/api/markets/bids/{bid}/events/", role=BA, wrong_role=FM, read=API_OBJECT),
    "api/markets/bids/<pk>/transition/": Row(
        "/api/markets/bids/{bid}/transition/",
        role=BA,
        wrong_role=FM,
        write=API_OBJECT_WRITE,
        body={"to_status": "approved"},
    ),
    "api/markets/awards/": Row("/api/markets/awards/", role=BA, wrong_role=FM, read=API_LIST, probe="award"),
    "api/markets/awards/<pk>/": Row("/api/markets/awards/{award}/", role=BA, wrong_role=FM, read=API_OBJECT),
    # -- regulation reports: award figures for bidding admins of the portfolio, vehicle lines for fleet managers
    "api/regulation/scores": Row("/api/regulation/scores", role=BA, wrong_role=FM, read=API_SCOPED_LIST, probe="score"),
    "api/regulation/settlements": Row(
        "/api/regulation/settlements", role=BA, wrong_role=FM, read=API_SCOPED_LIST, probe="settlement"
    ),
    "api/regulation/settlement-lines": Row(
        "/api/regulation/settlement-lines", role=FM, wrong_role=BA, read=API_SCOPED_LIST, probe="line"
    ),
    "api/regulation/settlement-lines.csv": Row(
        "/api/regulation/settlement-lines.csv", role=FM, wrong_role=BA, read=API_SCOPED_LIST, probe="line_marker"
    ),
    "api/regulation/reconciliation": Row(
        "/api/regulation/reconciliation", read=expect(DENIED, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK)
    ),
    # -- regulation intake (vpp.intake): today a Django permission, not yet a role or key scope
    # -- the regulation intake: a utility for its organisations' fleet portfolios (the owner's fleet here); operators
    # and holders of markets.submit_regulation_signal for any (tests/vpp/intake: keys, scopes, key portfolios)
    "api/regulation/signal": Row(
        "/api/regulation/signal",
        role=UT,
        wrong_role=FM,
        write=expect(DENIED, ALLOWED, FORBIDDEN, FORBIDDEN, ALLOWED),
        body=lambda w: {
            "product": "pjm:reg-d",
            "portfolio": f"fleet-{w.fleet}",
            "at": "2026-11-30T12:00:00Z",
            "value": "0.25",
        },
    ),
    "api/regulation/reserve": Row(
        "/api/regulation/reserve",
        role=UT,
        wrong_role=FM,
        write=expect(DENIED, ALLOWED, FORBIDDEN, FORBIDDEN, ALLOWED),
        body=lambda w: {
            "portfolio": f"fleet-{w.fleet}",
            "event_id": "matrix-1",
            "power_w": 10_000,
            "start": "2026-11-30T12:00:00Z",
            "end": "2026-11-30T12:30:00Z",
        },
    ),
    # -- utility programs (vpp.utility): bidding admins of the organisation change them, its fleet managers read
    #    them, utilities (the servers' side) see none; keys read only (tests/vpp/utility/test_programs.py)
    "api/utility/programs/": Row(
        "/api/utility/programs/",
        role=BA,
        read=API_LIST,
        probe="program",
        write=expect(DENIED, ALLOWED, FORBIDDEN, FORBIDDEN, ALLOWED),
        body=lambda w: {
            "organisation": w.org_slug,
            "name": "matrix program",
            "protocol": "openadr3",
            "endpoint": "https://vtn.example.com/openadr3",
            "client_name": "matrix-ven",
            "portfolio": f"fleet-{w.fleet}",
            "product": "pjm:reg-d",
        },
    ),
    "api/utility/programs/<int:pk>/": Row(
        "/api/utility/programs/{program}/",
        role=BA,
        read=API_OBJECT,
        write=API_OBJECT_WRITE,
        method="patch",
        body={"poll_s": 30},
    ),
    "api/utility/programs/<int:pk>/events/": Row("/api/utility/programs/{program}/events/", role=BA, read=API_OBJECT),
    "api/utility/programs/<int:pk>/reports/": Row("/api/utility/programs/{program}/reports/", role=BA, read=API_OBJECT),
    # -- peak shaving: a depot's interval data, uploaded by its organisation's fleet managers (keys: fleet:write);
    #    bodies, errors and audit in tests/markets/peak/test_interval_data_api.py
    "api/peak/sites/<slug:site>/interval-data": Row(
        "/api/peak/sites/{site}/interval-data",
        write=API_OBJECT_WRITE,
        body={"readings": [{"interval_start": "2026-11-30T12:00:00Z", "interval_minutes": 15, "import_w": 80_000}]},
    ),
    # -- station commands: members of the owning organisation see their stations' commands; Reset is operator-only
    "api/stations/<str:station_id>/call": Row(
        "/api/stations/{station_id}/call",
        # the operator's call reaches the (async) station link: tests/chargers/test_station_call.py
        write=expect(DENIED, FORBIDDEN, NOT_FOUND, FORBIDDEN, ELSEWHERE),
        body={"action": "Reset", "payload": {"type": "Immediate"}},
    ),
    "api/stations/<str:station_id>/commands": Row(
        "/api/stations/{station_id}/commands", read=expect(DENIED, OK, NOT_FOUND, OK, OK)
    ),
    "api/station-commands/": Row("/api/station-commands/", read=expect(DENIED, OK, OK, OK, OK)),
    # -- a user's own API keys (tests/fleet/test_keys.py: issuing, and revoking one's own); another's prefix is 404
    "account/api-keys/": Row("/account/api-keys/", api=False, read=expect(LOGIN, OK, OK, OK, OK)),
    "account/api-keys/<str:prefix>/revoke": Row(
        "/account/api-keys/notmine1/revoke",
        api=False,
        write=expect(LOGIN, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND),
    ),
    # -- the PKI's CRL: public by design (RFC 5280 distribution point); contents in tests/chargers/test_pki.py
    "pki/crl": Row("/pki/crl", api=False, read=PUBLIC),
    # -- the PKI's OCSP responder: public by design (RFC 6960: relying parties are anonymous, the answers signed);
    #    every answer is an OCSPResponse with 200 (these bodies get malformedRequest); contents in
    #    tests/chargers/test_plug_and_charge.py and test_ocsp.py
    "pki/ocsp": Row("/pki/ocsp", api=False, write=PUBLIC, body={"not": "an OCSP request"}),
    "pki/ocsp/<path:encoded>": Row("/pki/ocsp/MAMCAQA=", api=False, read=PUBLIC),
    # -- the load balancer's health check: public by design, says "ok"/"down" per dependency and nothing else; contents
    #    in tests/vpp/test_health.py
    "healthz": Row("/healthz", api=False, read=PUBLIC),
    # -- pages
    "login/": Row("/login/", api=False, read=PUBLIC),
    "logout/": Row("/logout/", api=False, write=expect(LOGIN, LOGIN, LOGIN, LOGIN, LOGIN)),  # signed out, to sign-in
    "": Row("/", api=False, read=expect(LOGIN, OK, OK, OK, OK)),
    "dashboard/overview.json": Row("/dashboard/overview.json", api=False, read=expect(LOGIN, OK, OK, OK, OK)),
    # the dashboard's reads are scoped (tests/vpp/dashboard: another organisation's stations, cars and power are not
    # in them); its commands are the vehicle's fleet managers' (another organisation's car: 404)
    "dashboard/history.json": Row("/dashboard/history.json?span=day", api=False, read=expect(LOGIN, OK, OK, OK, OK)),
    "dashboard/history.csv": Row("/dashboard/history.csv?span=week", api=False, read=expect(LOGIN, OK, OK, OK, OK)),
    "dashboard/regulation.json": Row("/dashboard/regulation.json", api=False, read=expect(LOGIN, OK, OK, OK, OK)),
    "dashboard/vehicles/<int:vehicle_id>/trip-target": Row(
        "/dashboard/vehicles/{vehicle}/trip-target",
        api=False,
        write=expect(LOGIN, ALLOWED, NOT_FOUND, FORBIDDEN, ALLOWED),
        body={"target_soc_pct": 80},
    ),
    "dashboard/vehicles/<int:vehicle_id>/discharge": Row(
        "/dashboard/vehicles/{vehicle}/discharge",
        api=False,
        write=expect(LOGIN, ALLOWED, NOT_FOUND, FORBIDDEN, ALLOWED),
        body={"power_kw": "5", "minutes": "10"},
    ),
    "markets/": Row("/markets/", api=False, role=BA, wrong_role=FM, read=expect(LOGIN, OK, OK, FORBIDDEN, OK)),
    "markets/bidding/": Row(
        "/markets/bidding/?day={bid_day}",
        api=False,
        role=BA,
        wrong_role=FM,
        read=expect(LOGIN, MOVED, MOVED, FORBIDDEN, MOVED),  # the old address of the day page
    ),
    "markets/<slug:operator>/<str:day>/": Row(
        "/markets/pjm/{bid_day}/",
        api=False,
        role=BA,
        wrong_role=FM,
        read=expect(LOGIN, SEES, BLIND, FORBIDDEN, SEES),
        probe="bid_marker",
    ),
    "markets/<slug:operator>/<str:day>/bids.csv": Row(
        "/markets/pjm/{bid_day}/bids.csv",
        api=False,
        role=BA,
        wrong_role=FM,
        read=expect(LOGIN, SEES, BLIND, FORBIDDEN, SEES),
        probe="bid_marker",
    ),
    "markets/<slug:operator>/<str:day>/propose/": Row(
        "/markets/pjm/{bid_day}/propose/",
        api=False,
        role=BA,
        wrong_role=FM,
        write=expect(LOGIN, ALLOWED, NOT_FOUND, FORBIDDEN, ALLOWED),  # another organisation's portfolio: 404
        body=lambda w: {"portfolio": f"fleet-{w.fleet}"},
    ),
    "markets/bids/<int:bid_id>/edit/": Row(
        "/markets/bids/{bid}/edit/",
        api=False,
        role=BA,
        wrong_role=FM,
        write=expect(LOGIN, ALLOWED, NOT_FOUND, FORBIDDEN, ALLOWED),
        body={"quantity_kw": "400", "price": "11", "version": "1"},
    ),
    "markets/bids/action/": Row(
        "/markets/bids/action/",
        api=False,
        role=BA,
        wrong_role=FM,
        write=expect(LOGIN, ALLOWED, NOT_FOUND, FORBIDDEN, ALLOWED),
        body=lambda w: {"action": "approve", "bid": [str(w.bid)]},
    ),
    "regulation/": Row("/regulation/", api=False, role=FM, wrong_role=UT, read=PAGE_SCOPED, probe="line_marker"),
    "regulation/export/<slug:kind>.csv": Row(
        "/regulation/export/revenue-vehicle.csv",
        api=False,
        role=FM,
        wrong_role=UT,
        read=PAGE_SCOPED,
        probe="line_marker",
    ),
    "regulation/settlements.csv": Row(
        "/regulation/settlements.csv", api=False, role=FM, wrong_role=UT, read=PAGE_SCOPED, probe="line_marker"
    ),
    "regulation/settlements/<int:pk>/audit": Row(
        "/regulation/settlements/{settlement}/audit",
        api=False,
        role=FM,
        wrong_role=UT,
        read=expect(LOGIN, OK, NOT_FOUND, NOT_FOUND, OK),
    ),
    "regulation/settlements/<int:pk>/lines/<int:line_pk>/readings.csv": Row(
        "/regulation/settlements/{settlement}/lines/{line}/readings.csv",
        api=False,
        role=FM,
        wrong_role=UT,
        read=expect(LOGIN, OK, NOT_FOUND, NOT_FOUND, OK),
    ),
    "utility/": Row("/utility/", api=False, role=BA, wrong_role=UT, read=PAGE_SCOPED, probe="program_marker"),
    "utility/<int:pk>/": Row(
        "/utility/{program}/", api=False, role=BA, wrong_role=UT, read=expect(LOGIN, OK, NOT_FOUND, NOT_FOUND, OK)
    ),
    # -- WebSockets: anonymous refusal here; the scoped feeds are tested in tests/vpp/dashboard and tests/chargers
    "ws:ws/dashboard": Row("/ws/dashboard", ws=True),
    "ws:ws/regulation": Row("/ws/regulation", ws=True, pending="tbd (wt-keys): API key auth and signal scope"),
    "ws:^ocpp/(?P<station_id>[^/]{1,48})/?$": Row("/ocpp/cs-none", ws=True),
}


# --- the routes -----------------------------------------------------------------------------------------------------


def _http_routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[str]:
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            if route == "admin/":  # Django's admin: one block, see test_the_admin_refuses_non_staff
                continue
            yield from _http_routes(p.url_patterns, route)
        elif "format" not in p.pattern.regex.groupindex:  # DRF's format-suffix twin of a route already listed
            yield _readable(route)


def _readable(route: str) -> str:
    """A router's regex (``api/^fleet/vehicles/(?P<pk>[^/.]+)/$``) as ``api/fleet/vehicles/<pk>/``."""
    if "^" not in route:
        return route
    route = re.sub(r"\(\?P<(\w+)>\[\^/\.\]\+\)", r"<\1>", route)
    return route.replace("^", "").replace("$", "")


def _ws_routes() -> set[str]:
    found = set()
    for module in app_modules("routing"):
        for name in ("websocket_urlpatterns", "device_websocket_urlpatterns"):
            for p in getattr(module, name, []):
                found.add(f"ws:{p.pattern}")
    return found


def test_every_route_has_a_row() -> None:
    routes = set(_http_routes(get_resolver().url_patterns)) | _ws_routes()
    assert sorted(routes - MATRIX.keys()) == [], "routes without a row in MATRIX (decide who may use them)"
    assert sorted(MATRIX.keys() - routes) == [], "rows in MATRIX for routes that are gone"


# --- one world for the module ---------------------------------------------------------------------------------------


@dataclass
class World:
    users: dict[str, User] = field(default_factory=dict)
    fleet: int = 0
    vehicle: int = 0
    bid: int = 0
    bid_day: str = ""
    bid_marker: str = ""
    award: int = 0
    score: int = 0
    settlement: int = 0
    line: int = 0
    line_marker: str = ""
    station_id: str = ""
    org_slug: str = ""
    program: int = 0
    program_marker: str = ""
    site: str = ""


def _money() -> dict[str, Decimal]:
    return {k: Decimal("1.00") for k in ("capacity_credit", "performance_credit", "energy_amount", "net")} | {
        "degradation_cost": Decimal("0.00")
    }


def _tenant(org: Organisation, tag: str, world: World | None) -> tuple[Fleet, Vehicle, Bid, Settlement]:
    fleet = FleetFactory.create(organisation=org)
    vehicle = VehicleFactory.create(fleet=fleet, name=f"VAN-{tag}-marker")
    station = StationFactory.create()
    StationOwnership.objects.create(station=station, organisation=org)
    portfolio = fleet_portfolio(fleet.pk)
    site = DepotSite.objects.create(
        code=f"depot-{tag.lower()}", name=f"Depot {tag}", organisation=org, threshold_w=100_000, demand_charge=0
    )
    now = timezone.now()
    # 15:00 UTC is the same calendar day in the market operator's zone (PJM: New York) as in UTC.
    start = (now + timedelta(days=2)).replace(hour=15, minute=0, second=0, microsecond=0)
    bid = BidFactory.create(
        portfolio=portfolio,
        external_ref=f"BID{tag}MARKER",
        interval_start=start,
        interval_end=start + timedelta(hours=1),
    )
    award = Award.objects.create(
        bid=bid,
        product=bid.product,
        portfolio=portfolio,
        interval_start=bid.interval_start,
        interval_end=bid.interval_end,
        awarded_w=100_000,
        clearing_price=Decimal("10"),
        source=Award.Source.values[0],
        received_at=now,
    )
    hour = (now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    score = PerformanceScoreRecord.objects.create(
        product=bid.product,
        portfolio=portfolio,
        kind=PerformanceScoreRecord.Kind.values[0],
        period_start=hour,
        period_end=hour + timedelta(hours=1),
        capacity_w=100_000,
        accuracy=Decimal(1),
        delay=Decimal(1),
        precision=Decimal(1),
        composite=Decimal(1),
        passed=True,
        rows=360,
        signal_mileage=Decimal(1),
        signal_samples=1,
        meter_values=1,
        duplicates_ignored=0,
        stations=1,
        computed_at=now,
    )
    settlement = Settlement.objects.create(
        award=award,
        period_start=hour,
        period_end=hour + timedelta(hours=1),
        score=score,
        score_value=Decimal(1),
        awarded_w=100_000,
        capacity_price=Decimal(1),
        performance_price=Decimal(1),
        mileage_ratio=Decimal(1),
        exact={},
        import_wh=0,
        export_wh=0,
        computed_at=now,
        **_money(),
    )
    line = SettlementLine.objects.create(
        settlement=settlement,
        station=station,
        evse_id=1,
        vehicle=vehicle,
        owner=org,
        vehicle_ref=vehicle.name,
        owner_ref=org.name,
        response_wh=0,
        import_wh=0,
        export_wh=0,
        pack_throughput_wh=0,
        meter_count=0,
        meter_digest="",
        **_money(),
    )
    program = UtilityProgram.objects.create(
        organisation=org,
        name=f"PROGRAM-{tag}-marker",
        protocol="openadr2b",
        endpoint="https://vtn.example.com/OpenADR2/Simple/2.0b",
        client_name=f"ven-{tag}",
        portfolio=portfolio,
        product=bid.product,
    )
    if world is not None:
        world.org_slug, world.program, world.program_marker = org.slug, program.pk, program.name
        world.fleet, world.vehicle, world.bid, world.award = fleet.pk, vehicle.pk, bid.pk, award.pk
        world.bid_day = bid.interval_start.date().isoformat()
        world.bid_marker = bid.external_ref
        world.score, world.settlement, world.line, world.line_marker = score.pk, settlement.pk, line.pk, vehicle.name
        world.station_id = station.station_id
        world.site = site.code
    return fleet, vehicle, bid, settlement


@pytest.fixture(scope="module", autouse=True)
def _pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A CA of its own for the module, so the public CRL route has a CRL to serve."""
    from django.test import override_settings

    from chargers.pki import ca, storage

    with override_settings(PKI_DIR=tmp_path_factory.mktemp("pki"), PKI_PASSPHRASE="permissions-test-passphrase"):
        storage.signing_key_forget()
        ca.ca_init()
        yield
    storage.signing_key_forget()


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """Organisation A (the owner) and B (the other), each with a fleet, a vehicle, a station, a bid, an award, a
    score, a settlement and a line; a user per role in each, an operator and a user without membership. Built once,
    rolled back at the end of the module; each test's own writes roll back to here."""
    with django_db_blocker.unblock(), transaction.atomic():
        w = World()
        a, b = OrganisationFactory.create(), OrganisationFactory.create()
        _tenant(a, "A", w)
        _tenant(b, "B", None)
        for org, tag in ((a, "a"), (b, "b")):
            for role in (FM, BA, UT):
                user = UserFactory.create(username=f"{role}-{tag}")
                Membership.objects.create(user=user, organisation=org, role=role)
                w.users[f"{role}-{tag}"] = user
        w.users["operator"] = UserFactory.create(username="operator", is_staff=True)
        w.users[NONE] = UserFactory.create(username="stranger")
        yield w
        transaction.set_rollback(True)


def _user(world: World, row: Row, actor: str) -> User | None:
    return {
        "anon": None,
        "owner": world.users.get(f"{row.role}-a"),
        "other": world.users.get(f"{row.role}-b"),
        "wrong": world.users.get(row.wrong_role if row.wrong_role == NONE else f"{row.wrong_role}-a"),
        "operator": world.users["operator"],
    }[actor]


def _client(row: Row, user: User | None) -> Client:
    if row.api:
        api = APIClient()
        if user is not None:
            api.force_login(user)
        return api
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _to_login(response: Any) -> bool:
    return response.status_code == 302 and "/login/" in response["Location"]


def _check(response: Any, expected: str, row: Row, world: World) -> None:
    code = response.status_code
    where = f"{response.request['REQUEST_METHOD']} {response.request['PATH_INFO']} -> {code}"
    if expected == LOGIN:
        assert _to_login(response), where
    elif expected == MOVED:
        assert code == 302, where
        assert not _to_login(response), where
    elif expected == DENIED:
        assert code in (401, 403), where
    elif expected in (NOT_FOUND, FORBIDDEN, NOT_ALLOWED):
        assert code == int(expected), where
    elif expected == ALLOWED:
        assert code not in (401, 403, 404, 405), where
        assert not _to_login(response), where
    elif expected == OK:
        assert 200 <= code < 300, where
    else:  # SEES / BLIND
        assert code == 200, where
        target = getattr(world, row.probe)
        if isinstance(target, int):
            ids = [item["id"] for item in response.json()["results"]]
            assert (target in ids) == (expected == SEES), f"{where}: {row.probe} {target} in {ids}"
        else:
            body = b"".join(response.streaming_content) if response.streaming else response.content
            assert (target.encode() in body) == (expected == SEES), f"{where}: {target!r} shown"


HTTP_ROWS = {key: row for key, row in MATRIX.items() if not row.ws}
READS = [(key, actor) for key, row in HTTP_ROWS.items() if row.read for actor in ACTORS]
WRITES = [(key, actor) for key, row in HTTP_ROWS.items() if row.write for actor in ACTORS]


@pytest.mark.django_db
@pytest.mark.parametrize(("key", "actor"), READS, ids=[f"{k or '/'}-{a}" for k, a in READS])
def test_read(world: World, key: str, actor: str) -> None:
    row = MATRIX[key]
    assert row.read is not None
    if row.read[actor] == ELSEWHERE:
        pytest.skip(f"{key} as {actor}: see the row's note")
    response = _client(row, _user(world, row, actor)).get(row.url.format(**vars(world)))
    _check(response, row.read[actor], row, world)


@pytest.mark.django_db
@pytest.mark.parametrize(("key", "actor"), WRITES, ids=[f"{k}-{a}" for k, a in WRITES])
def test_write(world: World, key: str, actor: str) -> None:
    row = MATRIX[key]
    assert row.write is not None
    if row.write[actor] == ELSEWHERE:
        pytest.skip(f"{key} as {actor}: see the row's note")
    body = row.body(world) if callable(row.body) else row.body
    client = _client(row, _user(world, row, actor))
    send = getattr(client, row.method)
    url = row.url.format(**vars(world))
    response = send(url, body, format="json") if row.api else send(url, body)
    _check(response, row.write[actor], row, world)


def test_rows_say_what_they_check() -> None:
    for key, row in MATRIX.items():
        assert row.ws or row.read or row.write, f"{key}: a row checks a read, a write or both"
        for table in (row.read, row.write):
            if table and {SEES, BLIND} & set(table.values()):
                assert row.probe, f"{key}: SEES/BLIND need a probe"


# --- outside the table ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_refuses_non_staff(world: World) -> None:
    """The admin is one block: Django's own staff check guards every page of it."""
    for name in (f"{FM}-a", f"{BA}-a", f"{UT}-a", NONE):
        client = Client()
        client.force_login(world.users[name])
        for url in ("/admin/", "/admin/fleet/vehicle/", "/admin/markets/bid/"):
            response = client.get(url)
            assert response.status_code == 302, (name, url)
            assert "/admin/login/" in response["Location"], (name, url)
    operator = Client()
    operator.force_login(world.users["operator"])
    assert operator.get("/admin/").status_code == 200


# --- API keys -------------------------------------------------------------------------------------------------------


def _key_client(world: World, user: str, scopes: list[str], **extra: Any) -> APIClient:
    """A request authenticated by an API key (as the key authentication will set it: user and ``request.auth``)."""
    holder = world.users[user]
    key, _ = ApiKey.objects.create_key(name=f"{user}-key", user=holder, scopes=scopes, **extra)
    client = APIClient()
    client.force_authenticate(holder, token=key)
    return client


@pytest.mark.django_db
def test_keys_read_with_scope_read_and_never_write_bids(world: World) -> None:
    without = _key_client(world, f"{BA}-a", [ApiScope.SIGNAL])
    assert without.get("/api/markets/bids/").status_code == 403
    reader = _key_client(world, f"{BA}-a", [ApiScope.READ, ApiScope.FLEET_WRITE, ApiScope.COMMAND])
    assert [b["id"] for b in reader.get("/api/markets/bids/").json()["results"]] == [world.bid]
    refused = reader.post(f"/api/markets/bids/{world.bid}/transition/", {"to_status": "approved"}, format="json")
    assert refused.status_code == 403
    assert reader.get("/api/regulation/settlements").status_code == 200


@pytest.mark.django_db
def test_fleet_writes_with_a_key_need_fleet_write(world: World) -> None:
    url = f"/api/fleet/vehicles/{world.vehicle}/soc/"
    reader = _key_client(world, f"{FM}-a", [ApiScope.READ])
    assert reader.get(f"/api/fleet/vehicles/{world.vehicle}/").status_code == 200
    assert reader.post(url, {"soc_pct": 40}, format="json").status_code == 403
    writer = _key_client(world, f"{FM}-a", [ApiScope.FLEET_WRITE])
    assert writer.get(f"/api/fleet/vehicles/{world.vehicle}/").status_code == 403  # no read scope
    assert writer.post(url, {"soc_pct": 40}, format="json").status_code == 201


@pytest.mark.django_db
def test_a_utility_key_reads_flexibility_of_its_portfolio_only(world: World) -> None:
    utility = f"{UT}-a"
    assert _key_client(world, utility, [ApiScope.SIGNAL]).get("/api/fleet/flexibility/").status_code == 403
    mine = _key_client(world, utility, [ApiScope.READ], portfolio=fleet_portfolio(world.fleet))
    assert mine.get("/api/fleet/flexibility/", {"fleet": world.fleet}).status_code == 200
    elsewhere = _key_client(world, utility, [ApiScope.READ], portfolio="fleet-999999")
    assert elsewhere.get("/api/fleet/flexibility/", {"fleet": world.fleet}).status_code == 400  # not in its contract
    # a utility reads no vehicles (identifiers, departures), key or not
    assert mine.get("/api/fleet/vehicles/").status_code == 403


@pytest.mark.django_db
def test_an_expired_or_revoked_key_reads_nothing(world: World) -> None:
    expired = _key_client(world, f"{BA}-a", [ApiScope.READ], expiry_date=timezone.now() - timedelta(minutes=1))
    assert expired.get("/api/markets/bids/").status_code == 403
    revoked = _key_client(world, f"{BA}-a", [ApiScope.READ], revoked=True)
    assert revoked.get("/api/markets/bids/").status_code == 403


def test_portfolios_are_named_as_dispatch_names_them() -> None:
    assert fleet_portfolio(7) == "fleet-7"
