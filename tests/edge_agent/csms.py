"""A small recording CSMS for the edge agent's tests and benches: the ``ocpp`` library behind ``websockets``.

It refuses unknown stations and wrong passwords at the handshake (401), answers the station-initiated actions,
records everything it receives, and stores TransactionEvents keyed by (transactionId, seqNo) the way a real CSMS
deduplicates, so a test can assert "each event stored exactly once". Like our CSMS, it recognises a retransmission
(same station, same message id, same payload as a message it already stored): answered again, not stored again,
listed in ``retransmits``. ``frames`` holds every CALL as it arrived on the wire (camelCase, with its id and how it
was answered); ``fail_next(action, code, ...)`` answers the next CALLs of that action with CALLERRORs. Tests drive
the station through ``call()``, cut links with ``drop()`` and simulate a half-open link with ``mute``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from ocpp.messages import CallError
from ocpp.routing import on
from ocpp.v21 import ChargePoint as CP21
from ocpp.v21 import call_result as r21
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as r201
from websockets.asyncio.server import Request, Response, Server, ServerConnection, serve


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Received:
    station: str
    action: str
    payload: dict[str, Any]  # snake_case, as the library hands it over
    at: float


@dataclass
class Frame:
    station: str
    message_id: str
    action: str
    payload: dict[str, Any]  # camelCase, exactly as it arrived
    answer: str = "result"  # "result", or the CALLERROR code it was answered with
    at: float = 0.0  # event-loop time of arrival


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Handlers:
    csms: RecordingCsms
    _call_result: Any
    _retransmit: bool = False
    _storing: tuple[tuple[str, str], str] | None = None

    def _rec(self, action: str, payload: dict[str, Any]) -> None:
        if self._retransmit:
            return  # stored already: answered again, not stored twice
        self.csms.record(self.id, action, payload)  # type: ignore[attr-defined]
        if self._storing is not None:  # stored now, whether or not the answer then reaches the station
            self.csms.stored_ids.setdefault(*self._storing)

    async def _send(self, message: str) -> None:
        if self.csms.lose_answers:
            return  # the request was handled and stored, but the answer never reaches the station
        await super()._send(message)  # type: ignore[misc]

    async def _handle_call(self, msg: Any) -> Any:
        if self.csms.mute:
            return None  # half-open link: swallow the request, never answer
        if self.csms.delay_s:
            await asyncio.sleep(self.csms.delay_s)
        csms, station = self.csms, self.id  # type: ignore[attr-defined]
        frame = Frame(station, msg.unique_id, msg.action, msg.payload, at=asyncio.get_running_loop().time())
        if csms.record_all:  # (benches run thousands of stations for minutes: keep no per-message state there)
            csms.frames.append(frame)
        queued = csms.failures.get(msg.action)
        if queued:
            frame.answer = queued.pop(0)
            error = CallError(msg.unique_id, frame.answer, "injected by the test CSMS", {})
            await self._send(error.to_json())
            return None
        key, body = (station, msg.unique_id), canonical(msg.payload) if csms.record_all else ""
        self._retransmit = csms.record_all and csms.stored_ids.get(key) == body
        if self._retransmit:
            csms.retransmits.append(frame)
        # Remembered when the handler stores the message (_rec), not after the answer is sent: a link cut between
        # the two would otherwise make the station's retransmission look like a new message.
        self._storing = (key, body) if csms.record_all else None
        try:
            return await super()._handle_call(msg)  # type: ignore[misc]
        finally:
            self._retransmit = False
            self._storing = None

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self._rec("BootNotification", kw)
        return self._call_result.BootNotification(
            current_time=_now(), interval=self.csms.heartbeat_s, status="Accepted"
        )

    @on("Heartbeat")
    def heartbeat(self, **kw: Any) -> Any:
        self._rec("Heartbeat", kw)
        return self._call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self._rec("StatusNotification", kw)
        return self._call_result.StatusNotification()

    @on("MeterValues")
    def meter_values(self, **kw: Any) -> Any:
        self._rec("MeterValues", kw)
        return self._call_result.MeterValues()

    @on("TransactionEvent")
    def transaction_event(self, **kw: Any) -> Any:
        self._rec("TransactionEvent", kw)
        return self._call_result.TransactionEvent()

    @on("NotifyEVChargingNeeds")
    def ev_needs(self, **kw: Any) -> Any:
        self._rec("NotifyEVChargingNeeds", kw)
        return self._call_result.NotifyEVChargingNeeds(status="Accepted")

    @on("NotifyReport")
    def notify_report(self, **kw: Any) -> Any:
        self._rec("NotifyReport", kw)
        return self._call_result.NotifyReport()

    @on("FirmwareStatusNotification")
    def firmware_status(self, **kw: Any) -> Any:
        self._rec("FirmwareStatusNotification", kw)
        return self._call_result.FirmwareStatusNotification()

    @on("SecurityEventNotification")
    def security_event(self, **kw: Any) -> Any:
        self._rec("SecurityEventNotification", kw)
        return self._call_result.SecurityEventNotification()

    @on("NotifyEvent")
    def notify_event(self, **kw: Any) -> Any:
        self._rec("NotifyEvent", kw)
        return self._call_result.NotifyEvent()

    @on("ReportChargingProfiles")
    def report_profiles(self, **kw: Any) -> Any:
        self._rec("ReportChargingProfiles", kw)
        return self._call_result.ReportChargingProfiles()


class _CP21(_Handlers, CP21):
    pass


class _CP201(_Handlers, CP201):
    pass


@dataclass
class RecordingCsms:
    stations: dict[str, str]  # station id -> password
    heartbeat_s: int = 300
    default_password: str | None = None  # accept any station id with this password (benches)
    host: str = "127.0.0.1"
    port: int = 0
    mute: bool = False
    lose_answers: bool = False
    delay_s: float = 0.0
    record_all: bool = True
    received: list[Received] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    events: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (tx id, seqNo) -> stored event
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    connections: dict[str, Any] = field(default_factory=dict)  # station id -> ChargePoint
    refused: list[tuple[str, int]] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)  # every CALL received, in order
    failures: dict[str, list[str]] = field(default_factory=dict)  # action -> CALLERROR codes still to answer
    stored_ids: dict[tuple[str, str], str] = field(default_factory=dict)  # (station, message id) -> payload
    retransmits: list[Frame] = field(default_factory=list)
    _server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ocpp"

    def record(self, station: str, action: str, payload: dict[str, Any]) -> None:
        self.counts[action] += 1
        if self.record_all:
            self.received.append(Received(station, action, payload, asyncio.get_running_loop().time()))
        if action == "TransactionEvent":
            key = (payload["transaction_info"]["transaction_id"], payload["seq_no"])
            if key in self.events:
                self.duplicates.append(payload)
            else:
                self.events[key] = payload

    def fail_next(self, action: str, *codes: str) -> None:
        """Answer the next CALLs of ``action`` with these CALLERROR codes, in order (then normally again)."""
        self.failures.setdefault(action, []).extend(codes)

    def frames_of(self, action: str, station: str | None = None) -> list[Frame]:
        return [f for f in self.frames if f.action == action and (station is None or f.station == station)]

    def of(self, action: str, station: str | None = None) -> list[dict[str, Any]]:
        return [r.payload for r in self.received if r.action == action and (station is None or r.station == station)]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path
        station = path[len("/ocpp/") :].strip("/") if path.startswith("/ocpp/") else ""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        expected = self.stations.get(station, self.default_password)
        if scheme.lower() != "basic" or user != station or expected is None or expected != password:
            self.refused.append((station, 401))
            return connection.respond(HTTPStatus.UNAUTHORIZED, "unknown station or wrong password\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        station = connection.request.path[len("/ocpp/") :].strip("/") if connection.request else "?"
        cls = _CP21 if connection.subprotocol == "ocpp2.1" else _CP201
        cp = cls(station, connection)
        cp.csms = self
        self.connections[station] = cp
        try:
            await cp.start()
        except Exception:
            pass
        finally:
            if self.connections.get(station) is cp:
                del self.connections[station]

    async def start(self, subprotocols: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1")) -> RecordingCsms:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            subprotocols=list(subprotocols),  # type: ignore[arg-type]
            process_request=self._process_request,
            compression=None,
            backlog=4096,
        )
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def drop(self, station: str) -> None:
        cp = self.connections.get(station)
        if cp is not None:
            cp._connection.transport.abort()

    async def call(self, station: str, request: Any) -> Any:
        return await self.connections[station].call(request, suppress=False)

    async def wait_for(self, predicate: Any, within_s: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + within_s
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.02)


def raw(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str)


__all__ = ["RecordingCsms", "r21", "r201"]


async def _serve_main(port: int, password: str, validate: bool, report_every_s: float) -> None:
    import signal
    import sys

    if not validate:
        import ocpp.charge_point

        async def _no_validation(*_: Any) -> None:
            return None

        ocpp.charge_point.validate_payload = _no_validation
    server = await RecordingCsms(stations={}, default_password=password, port=port, record_all=False).start()
    print(json.dumps({"port": server.port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), report_every_s)
        counts = dict(server.counts)
        print(json.dumps({"t": loop.time(), "counts": counts, "connections": len(server.connections),
                          "duplicates": len(server.duplicates)}), flush=True)  # fmt: skip
    await server.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Recording CSMS for the edge agent's benches")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--password", required=True)
    parser.add_argument("--no-validate", action="store_true", help="skip JSON-schema validation (CSMS-side cost)")
    parser.add_argument("--report-every", type=float, default=1.0)
    a = parser.parse_args()
    asyncio.run(_serve_main(a.port, a.password, not a.no_validate, a.report_every))
