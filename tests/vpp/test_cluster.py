"""The multi-node deployment, started as the README starts it (``manage.py runcluster``: two Daphne nodes behind the
real HAProxy on deploy/haproxy-cluster.cfg, a Celery worker and one beat, on PostgreSQL and Redis): a station on one
node is commanded through the other node's REST API, and when a node is killed its edge agents reconnect through the
balancer to the other, dispatch goes on and their ledgers show nothing missing and nothing doubled.

Skipped, saying why, on the embedded default (SQLite, in-memory channel layer: one process only) and without haproxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from websockets.typing import Subprotocol

from chargers.models import Station, StationCommand
from tests.chargers.factories import STATION_PASSWORD, StationFactory
from tests.cluster import Cluster, cluster_unavailable, get_json, post_json
from tests.drill import recovered, regulating, regulating_agents
from tests.fleet.factories import api_key_for
from tests.live import free_port

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

AGENTS = 20  # two agent processes of ten


@pytest.fixture
def cluster_env() -> None:
    if why := cluster_unavailable():
        pytest.skip(why)


@pytest.fixture
async def close_db_threads() -> AsyncIterator[None]:
    """sync_to_async ran the ORM on its worker thread: close that thread's connection, or PostgreSQL cannot drop the
    test database at the end of the session."""
    yield
    await sync_to_async(connections.close_all)()


def _holders(ids: list[str]) -> Counter[str]:
    """How many of the stations each server process holds: a socket's channel name starts with its process's prefix
    (channels-redis: ``specific.<process>!<connection>``)."""
    names = Station.objects.filter(station_id__in=ids).exclude(channel_name="").values_list("channel_name", flat=True)
    return Counter(name.split("!")[0] for name in names)


@pytest.mark.usefixtures("cluster_env", "close_db_threads")
async def test_a_station_on_one_node_is_commanded_through_the_api_of_either_node(tmp_path: Path) -> None:
    # Given two nodes behind HAProxy and an operator's API key of scope command
    station = await sync_to_async(StationFactory.create)()
    operator = await sync_to_async(get_user_model().objects.create_user)("ops", is_staff=True, password=None)
    key = await sync_to_async(api_key_for)(operator, "command")
    cluster = await asyncio.to_thread(Cluster(tmp_path).__enter__)
    try:
        # and a station connected through the balancer, so on one of the two nodes, answering what it is sent
        token = base64.b64encode(f"{station.station_id}:{STATION_PASSWORD}".encode()).decode()
        async with websockets.asyncio.client.connect(
            f"{cluster.ws}/ocpp/{station.station_id}",
            subprotocols=[Subprotocol("ocpp2.1")],
            additional_headers={"Authorization": f"Basic {token}"},
        ) as ws:
            boot = {"reason": "PowerUp", "chargingStation": {"model": "m", "vendorName": "v"}}
            await ws.send(json.dumps([2, "boot-1", "BootNotification", boot]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))[0] == 3
            received: list[list[object]] = []

            async def answer() -> None:
                async for frame in ws:
                    call = json.loads(frame)
                    if call[0] == 2:
                        received.append(call)
                        await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))

            answering = asyncio.ensure_future(answer())
            # When the station is commanded through each node's REST API in turn (one of them does not hold its
            # socket: the call crosses over Redis to the node that does), and through the balancer
            trigger = {"action": "TriggerMessage", "payload": {"requestedMessage": "Heartbeat"}, "timeout": 10}
            path = f"/api/stations/{station.station_id}/call"
            answers = []
            for base in (cluster.node_http(1), cluster.node_http(2), cluster.http):
                answers.append(await asyncio.to_thread(post_json, base + path, trigger, api_key=key))
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
    finally:
        await asyncio.to_thread(cluster.stop)
    # Then every node got the station's answer back, and the station saw each call once
    assert [(status, body and body.get("payload")) for status, body in answers] == [(200, {"status": "Accepted"})] * 3
    assert [call[2] for call in received] == ["TriggerMessage"] * 3
    # and each call is audited once, wherever it was made
    commands = StationCommand.objects.filter(station=station, action="TriggerMessage")
    assert await sync_to_async(commands.count)() == 3


@pytest.mark.usefixtures("cluster_env")
def test_the_balancer_checks_each_node_and_the_check_reveals_nothing(tmp_path: Path) -> None:
    with Cluster(tmp_path) as cluster:
        # When the health check is asked through the balancer and of each node
        answers = [get_json(f"{base}/healthz") for base in (cluster.http, cluster.node_http(1), cluster.node_http(2))]
    # Then each answers "ok" for the database and the channel layer, and nothing else
    assert answers == [(200, {"status": "ok", "database": "ok", "channel_layer": "ok"})] * 3


@pytest.mark.usefixtures("cluster_env")
def test_when_a_node_is_killed_its_agents_reconnect_to_the_other_and_nothing_is_lost_or_doubled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timings: dict[str, float] = {}
    # Given 20 agents in two processes, connected through the balancer (so spread over both nodes), regulating
    with (
        Cluster(tmp_path / "cluster") as cluster,
        regulating_agents(tmp_path, ws_base=cluster.ws, prefix="mn", timings=timings, count=AGENTS) as drill,
    ):
        ids = drill.ids
        before = _holders(ids)
        assert len(before) == 2, f"leastconn should spread 20 stations over both nodes: {before}"
        time.sleep(10)  # regulation undisturbed for a while

        # When node 2 is killed (SIGKILL) and left down
        killed = datetime.now(UTC)
        timings["every agent reporting and regulating again after the kill"] = recovered(
            ids, fault_over=lambda: cluster.kill_node(2), within=60
        )
        # Then every station is on the surviving node, reached through the balancer again
        after = _holders(ids)
        assert len(after) == 1, (before, after)
        assert next(iter(after)) in before, (before, after)
        assert sum(after.values()) == AGENTS
        # and dispatch goes on: every station keeps accepting dispatch commands
        time.sleep(10)
        assert regulating(ids, killed)
        # and once the agents have sent what they queued, their ledgers match what is stored
        verdict, _ = drill.ledgers_checked(tmp_path)
    with capsys.disabled():
        print(f"\nnode killed under {AGENTS} agents: {verdict}; spread before {dict(before)}")
        print("  " + ", ".join(f"{name} in {seconds:.1f} s" for name, seconds in timings.items()))
        print(f"  the utility's signal connection was dropped {drill.sender.reconnects} times: {drill.sender.drops}")
    assert " 0 missing, 0 doubled" in verdict


def test_runcluster_refuses_to_start_without_postgresql_and_redis(settings: Any) -> None:
    # Given the embedded default's in-memory channel layer (one process only)
    settings.REDIS_URL = None
    # When several nodes are asked for / Then nothing starts, and the error says what to set
    with pytest.raises(CommandError, match=r"DATABASE_URL=postgres://.* REDIS_URL=redis://"):
        call_command("runcluster", "--port", str(free_port()), "--fleet", "0", "--no-market")


def test_runcluster_refuses_node_ports_that_do_not_fit() -> None:
    if why := cluster_unavailable():
        pytest.skip(why)
    with pytest.raises(CommandError, match="--node-ports: 2 distinct ports"):
        call_command("runcluster", "--port", "18000", "--node-ports", "18001,18001", "--fleet", "0", "--no-market")
