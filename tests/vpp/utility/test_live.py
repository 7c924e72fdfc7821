"""End to end: an OpenADR 3 event from a VTN (``oadr3_vtn``, written from the OpenAPI document) reaches simulated
edge agents (``edge-agent simulate``: real OCPP 2.1 over real sockets) as charging profiles before the event's
start, through the VEN running inside the live server (``UTILITY_IN_SERVER``, the embedded in-memory channel
layer), and the report the VTN receives afterwards is the fleet's metered response, worked out here from the
stored meter values."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from django.conf import settings as django_settings

from chargers.models import MessageLog, MeterValue
from fleet.models import Organisation
from markets.regulation.models import ReserveDeployment
from tests.chargers.conftest import start_server, stop_server
from tests.fleet.factories import FleetFactory
from tests.live import free_port, wait_listening
from tests.vpp.utility.factories import UtilityProgramFactory
from tests.vpp.utility.oadr3_vtn import Vtn3
from vpp.models import Dispatch
from vpp.replay import harness
from vpp.serve import WORKER_ENV
from vpp.utility.models import EventStatus, Protocol, UtilityEvent
from vpp.utility.services import utility_program_update

SECRET = "e2e-oauth-client-secret-9"
PASSWORD = "ute2e-station-password-42"
CARS = 3
LEAD_S = 5


@contextlib.contextmanager
def _serving(vtn: Vtn3) -> Iterator[Vtn3]:
    """The VTN on its own loop in a thread (the test's main thread runs sync Django code and waits)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="vtn", daemon=True)
    thread.start()
    port = free_port()

    async def serve() -> web.AppRunner:
        runner = web.AppRunner(vtn.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    vtn.url = f"http://127.0.0.1:{port}"
    try:
        yield vtn
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _wait(condition: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.25)
    raise AssertionError(f"not within {within} s: {what}")


def _mean_net_w(station_ids: list[str], start: datetime, end: datetime) -> float:
    """Mean net power (W, + import) of the stations over [start, end), from their stored Power.Active.Import and
    .Export readings, each held until the station's next reading (the one in force at ``start`` included)."""
    energy_ws = 0.0
    for station_id in station_ids:
        net: dict[datetime, float] = {}
        rows = MeterValue.objects.filter(
            station__station_id=station_id,
            measurand__in=["Power.Active.Import", "Power.Active.Export"],
            timestamp__gte=start - timedelta(seconds=60),
            timestamp__lt=end,
        ).values_list("timestamp", "measurand", "value")
        for at, measurand, value in rows:
            net[at] = net.get(at, 0.0) + (float(value) if measurand.endswith("Import") else -float(value))
        times = sorted(net)
        for k, at in enumerate(times):
            begin = max(at, start)
            finish = min(times[k + 1] if k + 1 < len(times) else end, end, at + timedelta(seconds=60))
            if finish > begin:
                energy_ws += net[at] * (finish - begin).total_seconds()
    return energy_ws / (end - start).total_seconds()


@pytest.mark.live
@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_an_openadr3_event_reaches_the_cars_before_its_start_and_the_report_is_the_metered_response(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three simulated chargers with a car each, a VTN with a program, and the VEN inside the server
    ids = harness.stations_provision(count=CARS, prefix="ute2e", password=PASSWORD)
    vtn = Vtn3(clients={"e2e-ven": SECRET})
    vtn.add_program("e2e-program")
    # (the fleet's organisation, made here: its secret's variable is named by its id, set in the server's environment)
    org, _ = Organisation.objects.get_or_create(slug=harness.REPLAY_ORG, defaults={"name": "Regulation replay"})
    secret_env = f"UTILITY_ORG{org.pk}_SECRET"
    env = {"UTILITY_IN_SERVER": "1", "UTILITY_RETRY_S": "1", "UTILITY_EVENT_LEAD_S": str(LEAD_S),
           "UTILITY_ALLOW_HTTP": "1", secret_env: SECRET}  # fmt: skip
    with _serving(vtn):
        server = start_server(env, log_path=tmp_path / "server.log")
        try:
            ws = f"ws://127.0.0.1:{server.port}"
            with harness.simulated_agents(count=CARS, ws_base=ws, prefix="ute2e", password=PASSWORD):
                _wait(lambda: len(harness.stations_ready(ids)) == CARS, 120, "the cars plugged in and reporting")
                fleet = harness.fleet_register(harness.stations_ready(ids), name="utility e2e")
                program = UtilityProgramFactory.create(
                    fleet=fleet, protocol=Protocol.OPENADR_3, endpoint=vtn.url, client_name="e2e-ven",
                    program_ref="e2e-program", secret_env=secret_env, poll_s=1, report_s=2,
                )  # fmt: skip
                _wait(lambda: vtn.vens, 30, "the VEN registered")
                # When the VTN limits the fleet's import to 6 kW below what it draws now, for 30 s from 15 s on
                now = datetime.now(UTC).replace(microsecond=0)
                before_w = _mean_net_w(ids, now - timedelta(seconds=5), now)
                limit_w = round(before_w / 1000) * 1000 - 6000
                start = now + timedelta(seconds=15)
                end = start + timedelta(seconds=30)
                event = vtn.add_event(
                    vtn.programs[0]["id"],
                    [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [limit_w / 1000]}]}],
                    intervalPeriod={"start": start.isoformat().replace("+00:00", "Z"), "duration": "PT30S"},
                )
                # Then every charger accepted a charging profile from the event's deployment before its start
                deployment = _wait(
                    lambda: ReserveDeployment.objects.filter(portfolio=program.portfolio).first(), 30, "deployed"
                )
                assert deployment.start <= start - timedelta(seconds=LEAD_S - 1)
                assert deployment.end == end
                _wait(lambda: datetime.now(UTC) > start, 30, "the start")
                profiles = MessageLog.objects.filter(
                    station__station_id__in=ids, direction="out", action="SetChargingProfile",
                    created_at__gte=deployment.belief_time, responded_at__lt=start,
                )  # fmt: skip
                accepted = {m.station.station_id for m in profiles if (m.response or {}).get("status") == "Accepted"}
                assert accepted == set(ids)
                # And once the event is over the VTN receives its report: the metered mean demand of the interval
                report = _wait(
                    lambda: next((r for r in vtn.reports if r["reportName"].startswith("vpp-event-")), None),
                    60, "the after-event report",
                )  # fmt: skip
        finally:
            stop_server(server)
    (interval,) = report["resources"][0]["intervals"]
    assert interval["intervalPeriod"] == {"start": start.isoformat(), "duration": "PT30S"}
    metered_w = _mean_net_w(ids, start, end)
    (demand_kw,) = interval["payloads"][0]["values"]
    assert interval["payloads"][0]["type"] == "DEMAND"
    assert abs(demand_kw * 1000 - metered_w) <= 1.0  # reported in kW to the watt
    # (next to it the baseline: the metered power when the deployment began, before the fleet moved)
    assert interval["payloads"][1]["type"] == "BASELINE"
    (baseline_kw,) = interval["payloads"][1]["values"]
    assert baseline_kw * 1000 > metered_w + 1000, (baseline_kw, metered_w)
    assert report["eventID"] == event["id"]
    # And the fleet responded: it drew less during the event than before it, and held the limit (within 1 kW over
    # the interval: the profiles were in place before the start)
    assert metered_w < before_w - 1000, (before_w, metered_w, limit_w)
    assert metered_w <= limit_w + 1000, (before_w, metered_w, limit_w)
    stored = UtilityEvent.objects.get(program=program, event_ref=event["id"])
    assert stored.status == EventStatus.COMPLETED
    with capsys.disabled():
        lead = (start - max(m.responded_at for m in profiles if m.responded_at)).total_seconds()
        print(
            f"\nutility e2e, {CARS} cars: before {before_w:.0f} W, limit {limit_w} W, deployed "
            f"{deployment.power_w} W, metered during {metered_w:.0f} W (reported {demand_kw} kW); "
            f"last profile accepted {lead:.1f} s before the start"
        )


@pytest.mark.live
@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_an_export_limit_bounds_the_discharge_a_setpoint_event_deploys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three simulated chargers (OCPP 2.1, cars that can discharge 11 kW each) and the VEN inside the server
    ids = harness.stations_provision(count=CARS, prefix="utcap", password=PASSWORD)
    vtn = Vtn3(clients={"cap-ven": SECRET})
    vtn.add_program("cap-program")
    org, _ = Organisation.objects.get_or_create(slug=harness.REPLAY_ORG, defaults={"name": "Regulation replay"})
    secret_env = f"UTILITY_ORG{org.pk}_SECRET"
    env = {"UTILITY_IN_SERVER": "1", "UTILITY_RETRY_S": "1", "UTILITY_EVENT_LEAD_S": str(LEAD_S),
           "UTILITY_ALLOW_HTTP": "1", secret_env: SECRET}  # fmt: skip
    with _serving(vtn):
        server = start_server(env, log_path=tmp_path / "server.log")
        try:
            ws = f"ws://127.0.0.1:{server.port}"
            with harness.simulated_agents(count=CARS, ws_base=ws, prefix="utcap", password=PASSWORD):
                _wait(lambda: len(harness.stations_ready(ids)) == CARS, 120, "the cars plugged in and reporting")
                fleet = harness.fleet_register(harness.stations_ready(ids), name="utility caps e2e")
                program = UtilityProgramFactory.create(
                    fleet=fleet, protocol=Protocol.OPENADR_3, endpoint=vtn.url, client_name="cap-ven",
                    program_ref="cap-program", secret_env=secret_env, poll_s=1, report_s=2,
                )  # fmt: skip
                _wait(lambda: vtn.vens, 30, "the VEN registered")
                # When one interval asks the fleet to export 30 kW (setpoint -30 kW) but to export 2 kW at most
                start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=15)
                vtn.add_event(
                    vtn.programs[0]["id"],
                    [{"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-30.0]},
                                            {"type": "EXPORT_CAPACITY_LIMIT", "values": [2.0]}]}],
                    intervalPeriod={"start": start.isoformat().replace("+00:00", "Z"), "duration": "PT30S"},
                )  # fmt: skip
                _wait(lambda: datetime.now(UTC) > start + timedelta(seconds=20), 60, "the event under way")
                profiles = list(MessageLog.objects.filter(
                    station__station_id__in=ids, direction="out", action="SetChargingProfile", created_at__gte=start,
                ))  # fmt: skip
                dispatches = list(Dispatch.objects.filter(portfolio=program.portfolio, signal_at__gte=start))
        finally:
            stop_server(server)
    # Then every profile sent during the event keeps to the cap: the stations' setpoints add up to no more than
    # 2 kW of export, and no station may discharge past its share of it
    periods = [
        (m.payload or {})["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0] for m in profiles
    ]
    assert periods
    assert all(p["dischargeLimit"] >= -2_000 for p in periods)
    assert {d.setpoint_w for d in dispatches} == {-2_000}
    assert all("export cap 2000 W" in d.reason for d in dispatches)
    assert all(-2_000 <= d.allocated_w < 0 for d in dispatches)
    # And the meters agree: the fleet never exported more than the cap (mean over the event's first 20 s; the
    # simulated cars of this test may idle at 0 W, so this bounds the export, it does not show the discharge)
    metered_w = _mean_net_w(ids, start, start + timedelta(seconds=20))
    assert metered_w >= -2_000, metered_w
    with capsys.disabled():
        print(f"\nutility caps e2e, {CARS} cars: {len(dispatches)} dispatches at "
              f"{sorted({d.allocated_w for d in dispatches})} W under a 2 kW export cap (30 kW asked); "
              f"metered {metered_w:.0f} W")  # fmt: skip


@pytest.mark.live
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_the_server_takes_a_disabled_and_a_changed_program_without_a_restart(tmp_path: Path, settings: Any) -> None:
    settings.UTILITY_ALLOW_HTTP = True  # the test VTN serves plain HTTP on 127.0.0.1 (the server has it in its env)
    # Given the live server running the clients (re-reading the programs every second) and a program running in it
    vtn = Vtn3(clients={"live-ven": SECRET, "live-ven-2": SECRET})
    vtn.add_program("live-program")
    fleet = FleetFactory.create()
    secret_env = f"UTILITY_ORG{fleet.organisation_id}_SECRET"
    env = {"UTILITY_IN_SERVER": "1", "UTILITY_RETRY_S": "1", "UTILITY_RELOAD_S": "1", "UTILITY_EVENT_LEAD_S": "2",
           "UTILITY_ALLOW_HTTP": "1", secret_env: SECRET}  # fmt: skip
    with _serving(vtn):
        server = start_server(env, log_path=tmp_path / "server.log")
        try:
            program = UtilityProgramFactory.create(
                fleet=fleet, protocol=Protocol.OPENADR_3, endpoint=vtn.url, client_name="live-ven",
                program_ref="live-program", secret_env=secret_env, poll_s=1, report_s=5,
            )  # fmt: skip
            # (the clients start at the server's first connection: this request)
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/login/", timeout=10).close()
            _wait(lambda: vtn.vens, 30, "the VEN registered")
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
            end = start + timedelta(seconds=120)
            event = vtn.add_event(
                vtn.programs[0]["id"],
                [{"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-5.0]}]}],
                intervalPeriod={"start": start.isoformat().replace("+00:00", "Z"), "duration": "PT120S"},
            )
            rows = ReserveDeployment.objects.filter(portfolio=program.portfolio)
            _wait(lambda: rows.filter(end=end).exists(), 30, "the event deployed")
            # When a bidding admin disables the program (the service the API and the admin write through)
            utility_program_update(program=program, user=None, enabled=False)
            # Then the server withdraws the event's deployment (its end is now) and opts the event out
            _wait(lambda: rows.filter(end__lt=end).exists(), 15, "the deployment withdrawn")
            stored = UtilityEvent.objects.get(program=program, event_ref=event["id"])
            assert (stored.status, stored.status_reason) == (
                EventStatus.OPTED_OUT,
                "withdrawn: the program was disabled",
            )
            # And its VEN polls the VTN no more
            time.sleep(2.0)
            polls = len(vtn.polls)
            time.sleep(3.0)
            assert len(vtn.polls) == polls
            # When it is enabled again under another client name
            program.refresh_from_db()
            utility_program_update(program=program, user=None, enabled=True, client_name="live-ven-2")
            # Then the server's VEN runs with the new configuration: registered and polling under the new name
            _wait(lambda: [v["venName"] for v in vtn.vens] == ["live-ven", "live-ven-2"], 30, "re-registered")
            _wait(lambda: vtn.polls[-1:] == ["live-ven-2"], 15, "polling as live-ven-2")
        finally:
            stop_server(server)


@pytest.mark.live
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not django_settings.REDIS_URL, reason="several workers serve one port only over Redis")
def test_with_several_workers_only_worker_0_runs_the_clients(tmp_path: Path, settings: Any) -> None:
    # Given a program, and the server started with two workers, the clients inside it
    settings.UTILITY_ALLOW_HTTP = True
    vtn = Vtn3(clients={"multi-ven": SECRET})
    vtn.add_program("multi-program")
    fleet = FleetFactory.create()
    secret_env = f"UTILITY_ORG{fleet.organisation_id}_SECRET"
    with _serving(vtn):
        UtilityProgramFactory.create(
            fleet=fleet, protocol=Protocol.OPENADR_3, endpoint=vtn.url, client_name="multi-ven",
            program_ref="multi-program", secret_env=secret_env, poll_s=1, report_s=5,
        )  # fmt: skip
        env = {**os.environ, "UTILITY_IN_SERVER": "1", "UTILITY_ALLOW_HTTP": "1", secret_env: SECRET}
        port = free_port()
        db_name = str(django_settings.DATABASES["default"]["NAME"])
        log = (tmp_path / "server.log").open("wb")
        argv = [sys.executable, "-m", "vpp.serve", str(port), db_name, "1", "--workers", "2"]
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(server, port)
            workers = _wait(lambda: [*psutil.Process(server.pid).children()][1:] and
                            psutil.Process(server.pid).children(), 30, "two workers")  # fmt: skip
            assert sorted(w.environ()[WORKER_ENV] for w in workers) == ["0", "1"]
            # When both workers serve connections (the kernel spreads 16 new connections over them)
            for _ in range(16):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=60).close()
            _wait(lambda: vtn.polls, 30, "the VEN polling")
            time.sleep(3.0)
        finally:
            server.terminate()
            server.wait(20)
            log.close()
    # Then one client ran: one token taken, one VEN registered, and one server process says it runs the clients
    assert len(vtn.token_requests) == 1
    assert [v["venName"] for v in vtn.vens] == ["multi-ven"]
    said = (tmp_path / "server.log").read_text().count("utility clients running in this server process")
    assert said == 1
