"""Browser tests: Playwright (pytest-playwright) driving Debian's Chromium against the real server (``vpp.serve``,
tests.chargers.conftest.start_server) and simulated chargers (``edge-agent simulate``: real OCPP over real sockets).

Chromium is the distribution's (``apt-get install chromium``; ``.ci/run`` installs it), handed to Playwright as its
executable: no browser is ever downloaded. Without it the tests skip, saying so. Screenshots go to
``$VPP_VAR_DIR/test-artifacts/e2e/`` (``var/test-artifacts/e2e/`` by default), with the server's and the chargers' logs.

The site (organisation, people, stations, fleet, market history) is made once per module with the real services,
committed so the server process sees it, and flushed at the end (as a transactional test leaves the database).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from tests.chargers.conftest import ROOT, LiveServer, start_server, stop_server

T = TypeVar("T")
CHROMIUM = os.environ.get("E2E_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "Debian's Chromium is not installed (apt-get install chromium; .ci/run installs it in CI)"
ARTIFACTS = Path(settings.VAR_DIR) / "test-artifacts" / "e2e"
PASSWORD = "e2e-browser-password-7"  # the test site's people; never a real credential
STATION_PASSWORD = "e2e-station-password-0123"
STATIONS = 4
CHARGERS_RUN_S = 900  # the simulated chargers stop by themselves after this, whatever happens to the test run


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, with Debian's Chromium as the browser."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "accept_downloads": True, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture(autouse=True)
def _django_db_marker() -> None:
    """The browser tests carry ``django_db`` only so that pytest-django creates the test database when they run on
    their own (it sets up the aliases its collected tests ask for). No test here may wrap itself in a transaction on
    the main thread, where Playwright's event loop runs: the site is written once per module, from a thread of its
    own, and read by the server process. So pytest-django's per-test handling of the marker is switched off here."""


@pytest.fixture(scope="session", autouse=True)
def _test_database_before_the_browser(django_db_setup: None) -> None:
    """The test database is made before Playwright starts: once its event loop runs on the main thread, Django
    refuses synchronous work there."""


@dataclass
class Site:
    """The running site: its address, who signs in, what the market history holds, and the simulated chargers."""

    server: LiveServer
    fleet_id: int
    bid_day: str
    draft_refs: list[str]
    manager: str = "e2e-manager"
    bidder: str = "e2e-bidder"
    password: str = PASSWORD
    chargers: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.server.http_url

    def chargers_start(self) -> None:
        """Start the simulated chargers (once): they connect to the server and report every second."""
        if self.chargers is not None:
            return
        env = {**os.environ, "EDGE_AGENT_PASSWORD": STATION_PASSWORD}
        command = [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "simulate",
            "--count",
            str(STATIONS),
            "--csms",
            self.server.ws_url,
            "--id-prefix",
            "e2e",
            "--var-dir",
            str(ARTIFACTS / "chargers"),
            "--duration",
            str(CHARGERS_RUN_S),
        ]
        log = (ARTIFACTS / "chargers.log").open("ab")
        self.chargers = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def chargers_stop(self) -> None:
        if self.chargers is None:
            return
        self.chargers.terminate()
        try:
            self.chargers.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.chargers.kill()
            self.chargers.wait()
        self.chargers = None


def _site_seed() -> tuple[int, str, list[str]]:
    """An organisation with a fleet manager and a bidding admin, its stations and cars (some plugged in), three
    settled regulation hours and the next open day's draft bids."""
    from chargers.models import Station
    from fleet.models import PlugSession
    from fleet.seeding import DemoOrganisation, demo_fleet_seed, demo_organisation
    from fleet.services import vehicles as vehicle_services
    from fleet.services.accounts import user_add
    from fleet.services.stations import stations_provision
    from tests.e2e.seed import market_seed

    tenant = DemoOrganisation(slug="e2e", name="E2E Fleets", prefix="E2E")
    organisation = demo_organisation(tenant)
    ids = [f"e2e-{n}" for n in range(1, STATIONS + 1)]
    stations_provision(station_ids=ids, password=STATION_PASSWORD, organisation=organisation, update=True)
    now = datetime.now(UTC)
    seeded = demo_fleet_seed(now=now, vehicles=12, stations=ids, seed=11, tenant=tenant)
    # Every station has a car plugged in, whatever the sampled arrival times (the dashboard shows their SoC).
    open_sessions = PlugSession.objects.filter(vehicle__fleet=seeded.fleet, ended_at__isnull=True)
    busy = set(open_sessions.values_list("station_id", flat=True))
    # Not ``exclude(sessions__ended_at__isnull=True)``: across the relation that also drops every car that never had
    # a session (its LEFT JOIN row is null), and at some times of day that leaves no idle car at all.
    idle = list(seeded.fleet.vehicles.exclude(id__in=open_sessions.values("vehicle_id")).order_by("id"))
    for station_id, vehicle in zip([s for s in ids if s not in busy], idle, strict=False):
        vehicle_services.session_open(
            vehicle=vehicle, station_id=station_id, evse_id=1, transaction_id="", matched_by="seed", started_at=now
        )
        vehicle_services.soc_report(vehicle=vehicle, soc_wh=vehicle.usable_capacity_wh // 2, valid_at=now)
    user_add(username="e2e-manager", password=PASSWORD, role="fleet_manager", organisation_slug=tenant.slug)
    user_add(username="e2e-bidder", password=PASSWORD, role="bidding_admin", organisation_slug=tenant.slug)
    market = market_seed(fleet=seeded.fleet, stations=list(Station.objects.filter(station_id__in=ids[:2])))
    return seeded.fleet.pk, market.tomorrow, market.draft_refs


@pytest.fixture(scope="module")
def site(django_db_setup: None, django_db_blocker: Any) -> Iterator[Site]:
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with django_db_blocker.unblock():
        fleet_id, bid_day, refs = _in_a_thread(_site_seed)
    server = start_server(log_path=ARTIFACTS / "server.log")
    running = Site(server=server, fleet_id=fleet_id, bid_day=bid_day, draft_refs=refs)
    try:
        yield running
    finally:
        running.chargers_stop()
        time.sleep(1.0)  # the server applies the chargers' disconnects before it stops
        stop_server(server)
        with django_db_blocker.unblock():
            _in_a_thread(lambda: call_command("flush", interactive=False, verbosity=0))


def _in_a_thread(work: Callable[[], T]) -> T:
    """Run database work on a thread of its own: Playwright's sync API keeps an event loop running on the test's
    thread, where Django refuses synchronous queries."""

    def run() -> T:
        try:
            return work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot among the test artefacts."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
