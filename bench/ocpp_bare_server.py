"""Bare reference CSMS: the `ocpp` library's ChargePoint (v2.0.1 / v2.1) behind a `websockets` server.

It answers BootNotification, Heartbeat, StatusNotification, MeterValues and TransactionEvent, checks that a
Basic-auth header names the station (no password store: it stores nothing at all), and is the yardstick the
Django CSMS is compared against by ``bench/csms_compare.py``. It deliberately keeps the library's defaults
(JSON-schema validation of every request and response in the default thread executor), because that is what
"a CSMS built from the ocpp library" costs; ``--sync-validation`` validates inline instead, for a fairer floor.

Run::

    python bench/ocpp_bare_server.py --port 9100           # prints "listening on ws://127.0.0.1:9100/ocpp/<id>"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
import os
import resource
import signal
import sys
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import ocpp.messages
from ocpp.routing import on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v201 import ChargePoint as ChargePoint201
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

LOG = logging.getLogger("bench.bare")
SUBPROTOCOLS = ("ocpp2.1", "ocpp2.0.1")
HEARTBEAT_INTERVAL_S = 300


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def raise_fd_limit(wanted: int | None = None) -> int:
    """Raise the soft open-files limit towards the hard limit (one fd per socket); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else min(wanted, hard)
    if hard == resource.RLIM_INFINITY:
        target = wanted or 65536
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class BareHandlers:
    """The five station-initiated actions the load generator uses; the answers come from the version's module."""

    _call_result: Any

    @on("BootNotification")
    def on_boot_notification(self, **_: Any) -> Any:
        return self._call_result.BootNotification(current_time=_now(), interval=HEARTBEAT_INTERVAL_S, status="Accepted")

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return self._call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def on_status_notification(self, **_: Any) -> Any:
        return self._call_result.StatusNotification()

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return self._call_result.MeterValues()

    @on("TransactionEvent")
    def on_transaction_event(self, id_token: dict[str, Any] | None = None, **_: Any) -> Any:
        return self._call_result.TransactionEvent(id_token_info={"status": "Accepted"} if id_token else None)


class BareChargePoint21(BareHandlers, ChargePoint21):
    pass


class BareChargePoint201(BareHandlers, ChargePoint201):
    pass


def _station_id(path: str) -> str | None:
    prefix = "/ocpp/"
    if not path.startswith(prefix):
        return None
    station_id = path[len(prefix) :].split("?", 1)[0].strip("/")
    return station_id or None


def _basic_user(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _pw = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """Refuse at the handshake like a real CSMS would: 404 for a wrong path, 401 unless Basic user == station id."""
    station_id = _station_id(request.path)
    if station_id is None:
        return connection.respond(HTTPStatus.NOT_FOUND, "expected /ocpp/<station_id>\n")
    if _basic_user(request) != station_id:
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "Basic auth with user = station id required\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
        return response
    return None


async def handle(connection: ServerConnection) -> None:
    station_id = _station_id(connection.request.path if connection.request else "") or "?"
    cls = BareChargePoint21 if connection.subprotocol == "ocpp2.1" else BareChargePoint201
    charge_point = cls(station_id, connection)
    with contextlib.suppress(ConnectionClosed):
        await charge_point.start()


async def serve_forever(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handle,
        host,
        port,
        subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
        process_request=process_request,
        compression=None,
        backlog=4096,  # 1,000+ stations reconnect at once: the default backlog of 100 drops SYNs
        max_size=65536,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{host}:{bound}/ocpp/<station_id> pid={os.getpid()}", flush=True)
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--sync-validation", action="store_true", help="validate inline, not in a thread executor")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    fds = raise_fd_limit()
    if fds < 11000:
        LOG.warning("open-files limit is %d: 10,000 idle stations need more (ulimit -Hn)", fds)
    if args.sync_validation:
        ocpp.messages.ASYNC_VALIDATION = False
    asyncio.run(serve_forever(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
