"""Real-time peak shaving in a server process (``vpp.peak.service``): the CSMS's telemetry hook drives the site's
controller, which fans commands out to the cars' stations; and the fault drills: readings that stop or come late,
the database away while readings arrive, a station that does not answer.

The depot (hand-made figures): cap 100 kW (no plan: the site's threshold), margin max(2 kW, 2 % of 100 kW) = 2 kW;
three cars (11 kW discharge each, 90 % SoC) on OCPP 2.1 stations; the site meter is EVSE 0 of ``pk-main``.
A reading of 110 kW with the cars idle asks them for 100 - 2 - 110 = -12 kW in all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.test import Client

from chargers.fanout import Command, CommandResult, FanoutOutcome, NodeListener
from chargers.models import Station
from chargers.telemetry import TelemetryUpdate
from chargers.writer import _bind_loop
from fleet.models import SocEstimate, SocSource
from markets.models import DepotSite
from markets.peak.models import SiteMeter
from tests.fleet.factories import PlugSessionFactory, UserFactory
from tests.vpp.stand_ins import AnsweringStation
from vpp.models import PeakStep
from vpp.peak import service
from vpp.peak.service import PeakShaving, on_telemetry_committed
from vpp.peak.services import peak_step_record
from vpp.peak.shaver import PEAK_PROFILE_ID, ShaveStep, SiteShaver

pytestmark = pytest.mark.django_db(transaction=True)
CARS = ("pk-cs-1", "pk-cs-2", "pk-cs-3")


def _depot() -> int:
    now = datetime.now(UTC)
    site = DepotSite.objects.create(code="pk-depot", name="Peak depot", threshold_w=100_000, demand_charge=Decimal(0))
    main = Station.objects.create(station_id="pk-main", ocpp_version="2.1", channel_name="x")
    SiteMeter.objects.create(site=site, kind=SiteMeter.Kind.OCPP, station=main, evse_id=0)
    for sid in CARS:
        site.stations.add(Station.objects.create(station_id=sid, ocpp_version="2.1", channel_name="x"))
        session = PlugSessionFactory.create(station_id=sid, evse_id=1, started_at=now - timedelta(hours=2))
        SocEstimate.objects.create(
            vehicle=session.vehicle, soc_wh=52_200, source=SocSource.SEED, valid_at=now, known_at=now
        )  # 90 % of 58 kWh
    return site.pk


def _meter(w: int, *, age_s: float = 0.0, station_id: str = "pk-main", evse_id: int = 0) -> TelemetryUpdate:
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    return TelemetryUpdate(station_id, "meter", at, evse_id, values={"Power.Active.Import": w})


def _from_writer(loop: asyncio.AbstractEventLoop, *updates: TelemetryUpdate) -> None:
    """What the CSMS does after a commit: call the hook on its writer thread, which serves ``loop``."""

    def run() -> None:
        _bind_loop(loop)
        on_telemetry_committed(list(updates))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _setpoints(agents: dict[str, AnsweringStation]) -> dict[str, int]:
    out = {}
    for sid, agent in agents.items():
        action, payload = agent.calls[-1]
        assert action == "SetChargingProfile"
        assert payload["chargingProfile"]["id"] == PEAK_PROFILE_ID
        out[sid] = int(payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["setpoint"])
    return out


@pytest.fixture
async def depot(stations, monkeypatch) -> Any:
    """The depot in the database, answering stand-in stations for its cars, and this process's ``PEAK`` replaced by
    one that reloads every 50 ms (state older than 0.5 s is stale), started and loaded."""
    site_id = await sync_to_async(_depot)()
    agents = {sid: AnsweringStation() for sid in CARS}
    for sid, agent in agents.items():
        stations(sid, agent)
    peak = PeakShaving(refresh_s=0.05, max_state_age_s=0.5)
    monkeypatch.setattr(service, "PEAK", peak)
    peak.start()
    await _until(lambda: site_id in peak.shavers and peak.shavers[site_id].state is not None)
    yield site_id, peak, agents
    await peak.stop()


async def test_a_site_meter_reading_through_the_telemetry_hook_sets_the_cars_to_hold_the_cap(depot):
    site_id, peak, agents = depot
    # When the CSMS commits a site-meter reading of 110 kW (cars idle) and calls the hook on its writer thread
    _from_writer(asyncio.get_running_loop(), _meter(110_000))
    await _until(lambda: all(a.calls for a in agents.values()))
    # Then each car gets the peak profile, and together they discharge the 12 kW that put the site at 98 kW
    assert sum(_setpoints(agents).values()) == -12_000
    assert peak.shavers[site_id].last.action == "shave"


async def test_a_car_reading_counts_toward_the_fleet_and_a_reading_under_the_cap_asks_nothing(depot):
    site_id, peak, agents = depot
    loop = asyncio.get_running_loop()
    # When the site reads 90 kW (under 100 - 2): nothing is sent
    _from_writer(loop, _meter(90_000))
    await _until(lambda: peak.shavers[site_id].last is not None)
    assert peak.shavers[site_id].last.action == "under"
    assert not any(a.calls for a in agents.values())
    # When one car reports charging at 7 kW and the site reads 105 kW: the base is 98 kW, so the cars are asked for
    # 100 - 2 - 98 = 0 W in all (stop charging)
    _from_writer(loop, _meter(7_000, station_id="pk-cs-1", evse_id=1), _meter(105_000))
    await _until(lambda: all(a.calls for a in agents.values()))
    assert sum(_setpoints(agents).values()) == 0


async def test_when_readings_stop_nothing_more_is_sent_and_the_profiles_lapse_by_themselves(depot):
    _, _, agents = depot
    # Given the cars shaving on a reading
    before = time.time()
    _from_writer(asyncio.get_running_loop(), _meter(110_000))
    await _until(lambda: all(a.calls for a in agents.values()))
    after = time.time()
    # Then every profile is valid for the hold (60 s) from when it was sent, and no longer
    for agent in agents.values():
        valid_to = datetime.fromisoformat(agent.calls[-1][1]["chargingProfile"]["validTo"]).timestamp()
        assert before + 60 - 1 <= valid_to <= after + 60 + 1
    # When no reading comes for several reloads of the state: nothing more is sent (the profiles lapse by validTo)
    await asyncio.sleep(0.3)
    assert [len(a.calls) for a in agents.values()] == [1, 1, 1]


async def test_a_late_reading_asks_nothing_of_the_cars_and_is_logged_once(depot, caplog):
    site_id, peak, agents = depot
    loop = asyncio.get_running_loop()
    caplog.set_level(logging.WARNING, logger="vpp.peak.service")
    # When an edge agent replays two readings it buffered 5 minutes ago (far over the cap)
    _from_writer(loop, _meter(200_000, age_s=300))
    _from_writer(loop, _meter(210_000, age_s=299))
    await asyncio.sleep(0.2)
    # Then the cars are asked nothing, and one line says why
    assert not any(a.calls for a in agents.values())
    assert peak.shavers[site_id].last is None
    assert [r.getMessage() for r in caplog.records if "old when it arrived" in r.getMessage()] != []
    assert len([r for r in caplog.records if "old when it arrived" in r.getMessage()]) == 1
    # When a current reading follows: the cars shave on it, and the log says the readings are current again
    _from_writer(loop, _meter(110_000))
    await _until(lambda: all(a.calls for a in agents.values()))
    assert any("current again" in r.getMessage() for r in caplog.records)


async def test_the_database_away_while_readings_arrive_asks_nothing_and_shaving_resumes_without_restart(
    depot, monkeypatch, caplog
):
    site_id, peak, agents = depot
    loop = asyncio.get_running_loop()
    caplog.set_level(logging.INFO, logger="vpp.peak.service")
    real_load = service.site_state_load
    down = threading.Event()

    def load(**kwargs: Any) -> Any:  # the database as the reload thread sees it
        if down.is_set():
            raise OperationalError("could not connect to server: Connection refused")
        return real_load(**kwargs)

    monkeypatch.setattr(service, "site_state_load", load)
    # When the database goes away, long enough for the state to age past 0.5 s
    down.set()
    shaver = peak.shavers[site_id]
    await _until(lambda: time.time() - shaver.state.loaded_at > 0.6)
    # and a reading over the cap comes meanwhile
    _from_writer(loop, _meter(110_000))
    await _until(lambda: shaver.last is not None)
    # Then nothing crashed, the cars are asked nothing, and the failure is logged once (not every 50 ms)
    assert shaver.last.action == "stale"
    assert not any(a.calls for a in agents.values())
    assert len([r for r in caplog.records if "state reload failed" in r.getMessage()]) == 1
    # When the database is back: the reload works again (logged) and the next reading shaves, without a restart
    down.clear()
    await _until(lambda: any("works again" in r.getMessage() for r in caplog.records))
    _from_writer(loop, _meter(110_000))
    await _until(lambda: all(a.calls for a in agents.values()))
    assert sum(_setpoints(agents).values()) == -12_000


async def test_a_station_that_does_not_answer_is_logged_the_others_get_theirs_and_it_is_sent_again(
    depot, stations, caplog
):
    site_id, peak, _ = depot
    loop = asyncio.get_running_loop()
    caplog.set_level(logging.WARNING, logger="vpp.peak.shaver")
    # Given the third car's station silent (answers after 30 s, past the 1.5 s call timeout)
    silent = AnsweringStation(delay=30.0)
    stations("pk-cs-3", silent)
    # When the site reads 110 kW
    _from_writer(loop, _meter(110_000))
    shaver = peak.shavers[site_id]
    await _until(lambda: shaver.last is not None and shaver.last.outcome is not None)
    # Then the other two cars got and accepted their commands, the silent one timed out, and one line names it
    answers = {r.station_id: r.answer for r in shaver.last.outcome.results}
    assert answers == {"pk-cs-1": "Accepted", "pk-cs-2": "Accepted", "pk-cs-3": "timeout"}
    assert shaver.unanswered == {"pk-cs-3"}
    warned = [r.getMessage() for r in caplog.records if "no acceptance" in r.getMessage()]
    assert len(warned) == 1
    assert "pk-cs-3 (timeout)" in warned[0]
    # When the next reading comes: the silent station is sent its command again, and the warning is not repeated
    _from_writer(loop, _meter(110_000))
    await _until(lambda: len(silent.calls) == 2)
    await _until(lambda: not peak._busy)
    assert len([r for r in caplog.records if "no acceptance" in r.getMessage()]) == 1


async def _recorded(count: int, within: float = 10.0) -> list[PeakStep]:
    """The steps stored once there are ``count`` of them (they are written on the shaver's database thread)."""
    deadline = time.monotonic() + within
    while True:
        rows = await sync_to_async(lambda: list(PeakStep.objects.order_by("id")))()
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, f"{count} steps not recorded in time"
        await asyncio.sleep(0.05)


async def test_each_step_that_commands_the_cars_is_recorded_with_its_site_setpoint_reason_and_time(depot):
    site_id, peak, agents = depot
    loop = asyncio.get_running_loop()
    before = datetime.now(UTC)
    # When the site reads 90 kW (under the cap: nothing asked), then 110 kW
    _from_writer(loop, _meter(90_000))
    await _until(lambda: peak.shavers[site_id].last is not None)
    _from_writer(loop, _meter(110_000))
    await _until(lambda: all(a.calls for a in agents.values()))
    # Then the decision that sent the cars their setpoints is stored, by this process, with why and when (the
    # reading that asked nothing is not a command, and is not stored)
    [row] = await _recorded(1)
    assert (row.site_id, row.action, row.setpoint_w, row.achieved_w) == (site_id, "shave", -12_000, -12_000)
    assert (row.import_w, row.fleet_w, row.cap_w) == (110_000, 0, 100_000)
    assert (row.commands, row.accepted, row.failed) == (3, 3, 0)
    assert "12000 W over the cap 100000 W" in row.reason
    assert before <= row.at <= row.recorded_at
    assert row.node == NodeListener.node_id[:32]


def _a_recorded_step() -> PeakStep:
    site = DepotSite.objects.create(code="audit-depot", name="Audit depot", threshold_w=100_000, demand_charge=0)
    step = ShaveStep(time.time(), 110_000, 0, 100_000, -12_000, -11_000, "shave", reason="import over the cap")
    step.commands = [Command("pk-cs-1", "SetChargingProfile", {}), Command("pk-cs-2", "SetChargingProfile", {})]
    answers = [
        CommandResult("pk-cs-1", "result", "Accepted", step.at + 0.2),
        CommandResult("pk-cs-2", "timeout", "timeout", None),
    ]
    step.outcome = FanoutOutcome(answers, step.at, step.at + 1.5, 1)
    return peak_step_record(site_id=site.pk, step=step, node="node-a")


def test_the_steps_are_in_the_admin_read_only() -> None:
    # Given a recorded step, one car's station answered and the other's timed out
    row = _a_recorded_step()
    assert (row.commands, row.accepted, row.failed, row.setpoint_w) == (2, 1, 1, -12_000)
    operator = Client()
    operator.force_login(UserFactory.create(is_staff=True, is_superuser=True))
    # When an operator opens the steps in the admin; then they are listed, and nobody adds, changes or deletes one
    listing = operator.get("/admin/vpp/peakstep/")
    assert listing.status_code == 200
    assert "audit-depot" in listing.content.decode() or "Audit depot" in listing.content.decode()
    assert operator.get("/admin/vpp/peakstep/add/").status_code == 403
    assert operator.post(f"/admin/vpp/peakstep/{row.pk}/change/", {"reason": "edited"}).status_code == 403
    assert operator.post(f"/admin/vpp/peakstep/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert row.reason == "import over the cap"


async def test_a_shaver_that_never_loaded_a_state_asks_nothing():
    # Given a shaver whose state never loaded (the database away since the process started)
    shaver = SiteShaver(site_id=1, max_state_age_s=120.0)
    # When a reading far over any cap comes; then nothing is asked of any car
    step = await shaver.step(import_w=500_000)
    assert (step.action, step.commands, shaver.shaving) == ("stale", [], False)


def test_a_site_commands_only_its_own_organisations_cars_plugged_in_at_its_stations():
    # Given the depot's three charge points, the site now owned by the first car's organisation, and two cars of
    # other organisations plugged in beside it (PlugSessionFactory gives each car a fleet of its own)
    from fleet.models import PlugSession
    from vpp.peak.selectors import site_state_load

    site = DepotSite.objects.get(pk=_depot())
    sessions = list(PlugSession.objects.filter(station_id__in=CARS).select_related("vehicle__fleet"))
    owner = sessions[0].vehicle.fleet.organisation
    assert {s.vehicle.fleet.organisation_id for s in sessions[1:]} != {owner.pk}
    site.organisation = owner
    site.save(update_fields=["organisation"])
    # When the controller loads the site's state
    state = site_state_load(site_id=site.pk, now=time.time())
    # Then only the owner's car is there to command
    assert [route.station_id for route in state.routes] == [sessions[0].station_id]
