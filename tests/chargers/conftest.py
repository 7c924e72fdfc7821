"""Live CSMS fixtures: a Daphne subprocess serving the real app on a free port, and OCPP clients for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
from channels.testing import WebsocketCommunicator
from django.conf import settings
from ocpp.charge_point import ChargePoint
from websockets.typing import Subprotocol

from chargers.consumers import OcppConsumer
from tests.chargers.factories import STATION_PASSWORD
from tests.live import free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LiveServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(extra_env: dict[str, str] | None = None, *, log_path: Path | None = None) -> LiveServer:
    """The real ASGI app under Daphne (``vpp.serve``) on a free port, on the test database pytest-django made."""
    port = free_port()
    # The tests connect from one address and provoke refusals on purpose: the per-address and per-station limits
    # on failed handshakes (tested with their own server in test_hardening) would block the session's later tests.
    unlimited = {"OCPP_AUTH_FAILURES_PER_ADDRESS": "1000000", "OCPP_AUTH_FAILURES_PER_STATION": "1000000"}
    env = {**os.environ, **unlimited, **(extra_env or {})}
    db_name = str(settings.DATABASES["default"]["NAME"])
    # Verbosity 1: Daphne's access log lands in the captured output of a failing test.
    command = [sys.executable, "-m", "vpp.serve", str(port), db_name, "1"]
    # A server's own log file (``log_path``) outlives the test's output capture: what it said before it died.
    log = log_path.open("ab") if log_path is not None else None
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    wait_listening(process, port)
    return LiveServer(port, process)


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(autouse=True)
def _live_server_settled(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the live server, wait until it has applied its stations' disconnects.

    The server keeps writing for a moment after a test's sockets close (disconnect jobs, frames still queued).
    On PostgreSQL the test database's TRUNCATE between tests would otherwise deadlock with those writes.
    """
    yield
    if "live_csms" not in request.fixturenames:
        return
    from chargers.models import Station

    deadline = time.monotonic() + 10
    while Station.objects.exclude(channel_name="").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the last batch's COMMIT, after the row that said "disconnected" became visible


@pytest.fixture(scope="session")
def live_csms(django_db_setup: None, django_db_blocker: object) -> Iterator[LiveServer]:
    server = start_server()
    yield server
    stop_server(server)


def basic_auth(station_id: str, password: str = STATION_PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def station_socket(
    station_id: str, *, password: str = STATION_PASSWORD, tls: Mapping[str, Any] | None = None
) -> WebsocketCommunicator:
    """An in-process connection to the OCPP consumer (no server): Basic auth and the ocpp2.1 subprotocol.

    ``tls``: the ASGI ``tls`` scope extension the TLS listener would add (chargers.daphne_tls), e.g. ``TLS``."""
    communicator = WebsocketCommunicator(
        OcppConsumer.as_asgi(),
        f"/ocpp/{station_id}",
        headers=[(b"authorization", basic_auth(station_id, password)["Authorization"].encode())],
        subprotocols=["ocpp2.1"],
    )
    communicator.scope["url_route"] = {"kwargs": {"station_id": station_id}}
    if tls is not None:
        communicator.scope["extensions"] = {**communicator.scope.get("extensions", {}), "tls": dict(tls)}
    return communicator


# A connection over TLS without a client certificate (profile 2), as the TLS listener describes it.
TLS: dict[str, Any] = {
    "client_cert_chain": [],
    "client_cert_name": None,
    "client_cert_error": None,
    "tls_version": 0x0304,
}


class StationClient:
    """A charging station for tests: the `ocpp` library's ChargePoint (v2.0.1 or v2.1) over a real WebSocket."""

    def __init__(self, cp: ChargePoint, ws: websockets.asyncio.client.ClientConnection) -> None:
        self.cp = cp
        self.ws = ws


@contextlib.asynccontextmanager
async def station_client(
    server: LiveServer, station_id: str, *, version: str = "2.1", password: str = STATION_PASSWORD, handlers=None
) -> AsyncIterator[StationClient]:
    """Connect as ``station_id``; ``handlers`` maps an action to an async function answering CSMS calls."""
    from ocpp.v21 import ChargePoint as ChargePoint21
    from ocpp.v201 import ChargePoint as ChargePoint201

    cls = ChargePoint21 if version == "2.1" else ChargePoint201
    ws = await websockets.asyncio.client.connect(
        f"{server.ws_url}/{station_id}",
        subprotocols=[Subprotocol(f"ocpp{version}")],
        additional_headers=basic_auth(station_id, password),
        open_timeout=10,
    )
    cp = cls(station_id, ws, response_timeout=10)
    for action, handler in (handlers or {}).items():
        cp.route_map[action] = {"_on_action": handler, "_skip_schema_validation": False}
    task = asyncio.create_task(cp.start())
    try:
        yield StationClient(cp, ws)
    finally:
        task.cancel()
        await ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def wait_until(predicate, within: float = 10.0, interval: float = 0.05):
    """Poll an async predicate until it returns something truthy; returns it or fails the test."""
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def raw_station(server: LiveServer, station_id: str, *, version: str = "2.1") -> AsyncIterator[RawStation]:
    """A station that writes OCPP-J frames by hand, for malformed frames and exact retransmits."""
    ws = await websockets.asyncio.client.connect(
        f"{server.ws_url}/{station_id}",
        subprotocols=[Subprotocol(f"ocpp{version}")],
        additional_headers=basic_auth(station_id),
        open_timeout=10,
    )
    try:
        yield RawStation(ws)
    finally:
        await ws.close()


class RawStation:
    def __init__(self, ws: websockets.asyncio.client.ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: object) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, within: float = 10.0) -> list:
        return json.loads(await asyncio.wait_for(self.ws.recv(), within))

    async def rpc(self, frame: object, within: float = 10.0) -> list:
        await self.send(frame)
        return await self.recv(within)


@pytest.fixture
def call_station(live_csms: LiveServer, transactional_db: None):
    """``await call_station(station_id, action, payload, timeout)`` through ``station_call`` in some process.

    With REDIS_URL the test process itself calls ``station_call_async`` over the shared channel layer; with the
    in-memory layer it goes through the server's ``POST /api/stations/<id>/call`` (fleet's, what ``station call``
    does) as an operator, and HTTP statuses are mapped back to the service's exceptions. Either way the calls are
    audited (``StationCommand``).
    """
    from django.contrib.auth import get_user_model

    from chargers.services import station_call
    from tests.fleet.factories import api_key_for

    if settings.REDIS_URL:

        async def direct(station_id: str, action: str, payload: dict, timeout: float = 10.0) -> dict:  # noqa: ASYNC109
            return await station_call.station_call_async(
                station_id=station_id,
                action=action,
                payload=payload,
                actor_user_id=None,
                actor_label="tests",
                timeout=timeout,
            )

        return direct

    admin = get_user_model().objects.create_user("ops", is_staff=True, password=None)
    token = api_key_for(admin, "command")
    errors = {
        404: station_call.StationUnknown,
        400: station_call.CallPayloadInvalid,
        409: station_call.StationOffline,
        504: station_call.CallTimeout,
    }

    def post(station_id: str, action: str, payload: dict, timeout: float) -> dict:
        request = urllib.request.Request(
            f"{live_csms.http_url}/api/stations/{station_id}/call",
            data=json.dumps({"action": action, "payload": payload, "timeout": timeout}).encode(),
            headers={"Authorization": f"Api-Key {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout + 10) as response:
                return json.loads(response.read())["payload"]
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())  # an RFC 9457 problem document (fleet.problems)
            if exc.code == 502:
                raise station_call.CallErrorResponse(
                    body["ocpp_error_code"], body["ocpp_error_description"], body.get("ocpp_error_details")
                ) from exc
            raise errors.get(exc.code, RuntimeError)(body.get("detail")) from exc

    async def via_api(station_id: str, action: str, payload: dict, timeout: float = 10.0) -> dict:  # noqa: ASYNC109
        return await asyncio.to_thread(post, station_id, action, payload, timeout)

    return via_api


@pytest.fixture
async def batchers_closed() -> AsyncIterator[None]:
    """In-process consumers' batcher threads (``writer_for_loop``) close their database connections after the test,
    and the sync_to_async thread its own, before the test database goes (PostgreSQL refuses to drop one in use)."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    from chargers import writer

    yield
    loop = asyncio.get_running_loop()
    for key in [key for key in writer._writers if key[0] == id(loop)]:
        batcher = writer._writers.pop(key)
        await loop.run_in_executor(batcher._executor, connections.close_all)
        batcher._executor.shutdown()
    await sync_to_async(connections.close_all)()
