"""A reserve event in force when a server process (re)starts is resumed: its remaining duration is dispatched, once.

Two cars (11 kW discharge, 90 % SoC) on OCPP 2.1 stand-in stations, no meter values (baseline 0 W): a 10 kW event
is 0 - 10 kW = -10 kW for the fleet, -5 kW a car.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.utils import timezone

from chargers.fanout import NodeListener
from chargers.models import Station
from chargers.writer import _bind_loop
from fleet.models import SocEstimate, SocSource
from markets.regulation.models import ReserveDeployment
from markets.regulation.services import reserve_deployment_record
from markets.reserve.services import reserve_run_claim
from tests.fleet.factories import PlugSessionFactory
from tests.markets.regulation.data import regulation_product
from tests.vpp.stand_ins import AnsweringStation
from vpp.dispatch import reserve_intake as services
from vpp.dispatch.reserve import reserve_runs, reserve_runs_stop
from vpp.dispatch.reserve_intake import _reserve_run_create, reserve_event_of, reserve_runs_resume

pytestmark = pytest.mark.django_db(transaction=True)
CARS = ("rs-1", "rs-2")


def _depot_with_event(*, lease_node: str = "", lease_s: float | None = None) -> int:
    """Two cars plugged in, and a 10 kW event that started 5 minutes ago and runs 10 more (stored before the
    restart, by a process that may still hold its lease for ``lease_s`` seconds, or held it until then)."""
    regulation_product()  # the reserve product the event is recorded under
    now = timezone.now()
    for sid in CARS:
        Station.objects.create(station_id=sid, ocpp_version="2.1", channel_name="x")
        session = PlugSessionFactory.create(station_id=sid, evse_id=1, started_at=now - timedelta(hours=2))
        SocEstimate.objects.create(
            vehicle=session.vehicle, soc_wh=52_200, source=SocSource.SEED, valid_at=now, known_at=now
        )
    row, _ = reserve_deployment_record(
        portfolio="default", event_id="rs-1", power_w=10_000, start=now - timedelta(minutes=5),
        end=now + timedelta(minutes=10), source="utility_api",
    )  # fmt: skip
    if lease_node:
        until = now + timedelta(seconds=lease_s or 0)
        ReserveDeployment.objects.filter(pk=row.pk).update(run_node=lease_node, run_lease_until=until)
    return row.pk


def _setpoints(agent: AnsweringStation) -> list[float]:
    return [
        p["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["setpoint"]
        for action, p in agent.calls
        if action == "SetChargingProfile"
    ]


def _agents(stations) -> dict[str, AnsweringStation]:
    agents = {sid: AnsweringStation() for sid in CARS}
    for sid, agent in agents.items():
        stations(sid, agent)
    return agents


async def _until(condition, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_an_event_in_force_at_start_up_is_resumed_from_the_first_telemetry(stations, monkeypatch):
    # Given an event in force, stored before this process started (no process dispatches it), and two cars
    pk = await sync_to_async(_depot_with_event)()
    agents = _agents(stations)
    monkeypatch.setattr(services, "_resume_checked_at", [float("-inf")])
    loop = asyncio.get_running_loop()

    # When the CSMS commits this process's first telemetry (on its writer thread)
    def from_writer() -> None:
        _bind_loop(loop)
        services.on_telemetry_resume([])

    thread = threading.Thread(target=from_writer)
    thread.start()
    thread.join()
    try:
        await _until(lambda: all(_setpoints(a) for a in agents.values()))
        # Then the rest of the event is dispatched: -10 kW for the fleet, -5 kW a car
        assert [_setpoints(a)[0] for a in agents.values()] == [-5_000.0, -5_000.0]
        # And this process holds the event's lease
        row = await sync_to_async(ReserveDeployment.objects.get)(pk=pk)
        assert row.run_node == NodeListener.node_id
        assert row.run_lease_until is not None
        assert row.run_lease_until > timezone.now()
        # When this process checks again, and another process tries to claim the event
        again = await reserve_runs_resume()
        other = await sync_to_async(reserve_run_claim)(
            deployment_id=pk, node="other-process", now=timezone.now(), lease=timedelta(seconds=30)
        )
        # Then nothing is doubled: one run here, none there
        assert again == []
        assert len(reserve_runs()) == 1
        assert other is False
    finally:
        await reserve_runs_stop()


async def test_an_event_another_live_process_dispatches_is_not_resumed_here(stations):
    # Given an event whose lease another process renewed 5 s ago (it holds it 30 s more)
    await sync_to_async(_depot_with_event)(lease_node="other-process", lease_s=30)
    agents = _agents(stations)
    # When this process looks for events to resume
    started = await reserve_runs_resume()
    # Then it starts nothing and sends nothing
    assert started == []
    assert all(a.calls == [] for a in agents.values())


async def test_of_two_processes_starting_the_same_event_only_the_lease_holder_dispatches_it(stations):
    # Given an event nobody dispatches, which another process claims first
    pk = await sync_to_async(_depot_with_event)()
    agents = _agents(stations)
    row = await sync_to_async(ReserveDeployment.objects.get)(pk=pk)
    claimed = await sync_to_async(reserve_run_claim)(
        deployment_id=pk, node="other-process", now=timezone.now(), lease=timedelta(seconds=30)
    )
    # When this process starts a run for it too (it found it before the claim)
    event = await sync_to_async(reserve_event_of)(row, received_at=time.time())
    run = _reserve_run_create(event)
    await asyncio.wait_for(run.run(), 15)
    # Then its run stops without sending or releasing anything
    assert claimed is True
    assert run.claimed_elsewhere is True
    assert run.results == []
    assert all(a.calls == [] for a in agents.values())


async def test_a_dead_process_event_is_taken_over_once_its_lease_expires(stations):
    # Given an event whose dispatching process died: its lease ran out a second ago
    pk = await sync_to_async(_depot_with_event)(lease_node="dead-process", lease_s=-1)
    agents = _agents(stations)
    try:
        # When this process looks for events to resume
        started = await reserve_runs_resume()
        await _until(lambda: all(_setpoints(a) for a in agents.values()))
        # Then it takes the event over and dispatches the rest of it
        assert [run.event.pk for run in started] == [pk]
        assert [_setpoints(a)[0] for a in agents.values()] == [-5_000.0, -5_000.0]
        row = await sync_to_async(ReserveDeployment.objects.get)(pk=pk)
        assert row.run_node == NodeListener.node_id
    finally:
        await reserve_runs_stop()


async def test_a_resume_check_with_the_database_away_logs_and_leaves_it_to_the_next_telemetry(monkeypatch, caplog):
    # Given a database that refuses connections
    def down(_now: object) -> list[object]:
        raise OperationalError("connection refused")

    monkeypatch.setattr(services, "_events_to_resume", down)
    # When the resume check runs
    with caplog.at_level(logging.ERROR, logger="vpp.dispatch.services"):
        await services._resume_logged()
    # Then it does not raise, starts nothing, and says so
    assert reserve_runs() == []
    assert "trying again with the next telemetry" in caplog.text
