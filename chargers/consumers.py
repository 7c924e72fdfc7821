"""The OCPP-J endpoint ``ws://HOST:PORT/ocpp/<station_id>`` (OCPP 2.1 preferred, 2.0.1).

A thin edge: authenticate the handshake, negotiate the subprotocol, parse and validate each frame, hand valid
station messages to the group-commit writer and answer once they are durable. CSMS-initiated calls arrive over the
channel layer (``ocpp.call``) and go out one at a time, in order, as OCPP-J requires.

Why one module: it is one connection's life (handshake, frames in, calls out, close), whose state the parts share;
the handshake's checks (chargers.handshake) and the frame limits (chargers.frame_gate) are already outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from autobahn.exception import Disconnected as SocketClosed
from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from chargers import certificate_sessions, fanout, ocpp_j, outage, ownership
from chargers.apply import batch_apply
from chargers.daphne_denial import EXTENSION as DENIAL_EXTENSION
from chargers.daphne_tls import EXTENSION as TLS_EXTENSION
from chargers.frame_gate import CLOSE_TOO_BIG, RATE_LIMITED_CODE, RATE_LIMITED_DESCRIPTION, FrameGate
from chargers.handlers.provisioning import boot_refusal_check, boot_triggers
from chargers.handlers.registry import PREFETCH
from chargers.handlers.storable import payload_storable_check
from chargers.handshake import (
    Refused,
    basic_credentials,
    boot_statuses_many,
    client_address,
    handshake_failed,
    handshake_retry_after,
    station_authenticate,
    subprotocol_negotiate,
)
from chargers.jobs import CallOutcome, Connected, Disconnected, IncomingCall, IncomingSend, Job, LogEntry, StationRef
from chargers.models import BootStatus, Direction, StationEventKind
from chargers.ocpp_j import Frame, OcppError
from chargers.pki.verify import ClientCert
from chargers.services.security_events import security_event_later
from chargers.writer import GroupCommitWriter, writer_for_loop

LOG = logging.getLogger(__name__)
CLOSE_NO_SUBPROTOCOL = 4002  # application code (autobahn allows 1000 and 3000-4999 only)
CLOSE_REPLACED = 4000  # application code: another connection took over this station id
CLOSE_CERTIFICATE_REVOKED = 4003  # application code: the client certificate this connection opened with was revoked
CLOSE_CERTIFICATE_EXPIRED = 4004  # application code: ... expired while connected


class OcppConsumer(AsyncConsumer):
    station: StationRef
    boot_status: str
    client_cert: ClientCert | None = None  # profile 3: the certificate admitted at the handshake
    writer: GroupCommitWriter[Job]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """AsyncConsumer.__call__ with a cheaper loop: each frame is awaited and dispatched directly.

        Channels' ``await_many_dispatch`` waits on the client and the channel layer together: per frame a new Task
        and an ``asyncio.wait`` over both (a measurable share of the CSMS's CPU at a thousand frames a second).
        Here the client's messages are dispatched in this loop, one after another as Channels does, and
        channel-layer messages (``ocpp.call``, ``ocpp.replaced``) by a second task started once the connection
        is accepted; their handlers only queue work or close the socket, so they may interleave with a frame's.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        self.channel_pump: asyncio.Task[None] | None = None
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            if self.channel_pump is not None:
                self.channel_pump.cancel()

    async def _pump_channel(self) -> None:
        """Channel-layer messages for this socket, for as long as it is open, through Redis outages.

        A failed receive (Redis down or restarting: ConnectionError, TimeoutError, ...) must not end the pump, or
        the station stays connected but can no longer be commanded: back off (0.1 s doubling, capped at 2 s) and
        receive again, so the socket is commandable within seconds of Redis returning. The outage is logged once
        per process (chargers.outage), not per retry. Nothing needs re-registering after a restart that lost
        Redis's data: this socket's channel is process-local (a list key created by the first send) and joins no
        group; the fan-out node re-joins its group by itself (chargers.fanout).
        """
        assert self.channel_layer is not None
        failures = 0
        while True:
            try:
                message = await self.channel_layer.receive(self.channel_name)
            except Exception as exc:  # not CancelledError (a BaseException): closing the socket still stops it
                failures += 1
                outage.CHANNEL_LAYER.failed(exc)
                await asyncio.sleep(outage.backoff(failures))
                continue
            if failures:
                failures = 0
                outage.CHANNEL_LAYER.recovered()
            try:
                await self.dispatch(message)
            except Exception:
                LOG.exception("handling %s for %s failed", message.get("type"), self.station.station_id)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """AsyncConsumer.dispatch minus its per-message ``aclose_old_connections()``.

        Channels runs close_old_connections in the thread-sensitive sync executor before every handler: one thread
        hop per OCPP frame, 15-20% of the server's CPU under load. This consumer uses no database connection on the
        event loop (``_authenticate`` and the group-commit writer run on batcher threads that own their
        connections), so there is nothing to close here.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        station_id = self.scope["url_route"]["kwargs"]["station_id"]
        tls = self.scope.get("extensions", {}).get(TLS_EXTENSION)
        address = client_address(self.scope)
        retry_after = handshake_retry_after(station_id, address)
        if retry_after:  # too many failures: refused without checking, told when to retry (chargers.handshake)
            await self._deny(429, retry_after=retry_after)
        try:
            row = await station_authenticate(station_id, basic_credentials(self.scope), tls)
        except DatabaseError:  # cannot check the password now: 503, and the station retries its connection
            LOG.warning("refused %s's connection: the database is not answering", station_id)
            await self._deny(503)
        if isinstance(row, Refused):
            # Known stations' refusals are logged and stored as SecurityEvents by the handshake batch; every
            # refusal counts towards the per-station and per-address limits.
            LOG.info("refused %s's connection (%d): %s", station_id, row.status, row.reason)
            handshake_failed(station_id, address, reason=row.reason)
            await self._deny(row.status)
        version = subprotocol_negotiate(self.scope.get("subprotocols", []))
        if version is None:
            # OCPP-J: complete the handshake without a Sec-WebSocket-Protocol header, then close at once.
            await self.send({"type": "websocket.accept"})
            await self.send({"type": "websocket.close", "code": CLOSE_NO_SUBPROTOCOL})
            raise StopConsumer
        pk, self.boot_status, self.client_cert = row
        self.boot_read_at = time.monotonic()  # when boot_status was read (chargers.handshake: just now)
        self.boot_triggered: set[str] = set()  # what our calls asked the station to send while not Accepted
        self.station = StationRef(pk=pk, station_id=station_id, version=version, tls=tls is not None)
        self.writer = writer_for_loop(batch_apply)
        self.closed = False
        # CSMS calls waiting for their turn (one outstanding at a time); a full queue answers "busy" at once. Made
        # with its worker at the first call (_call_queue): most connections spend their life without one, and an
        # idle connection's memory is what 10,000 stations on one process multiply.
        self.calls: asyncio.Queue[dict[str, Any]] | None = None
        self.call_worker: asyncio.Task[None] | None = None
        self.pending: tuple[str, asyncio.Future[tuple[Frame, float]]] | None = None
        self.call_idle = True  # the call worker waits for the next call (not sending, awaiting or handing over one)
        # The station's own frames, handled strictly in arrival order by one task; see websocket_receive. Bounded:
        # a full inbox stops this consumer reading further frames until the writer catches up (websocket_receive).
        self.inbox: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue(settings.OCPP_INBOX_MAX)
        self.gate = FrameGate(station_id=station_id, address=address)  # message size and rate (issue 14)
        # Claim the station before accepting: once the station sees the socket open, station_call can route to it.
        try:
            previous = await self.writer.submit(Connected(self.station, self.channel_name, datetime.now(UTC)))
        except DatabaseError:  # the claim is not stored: no socket for a station the CSMS cannot route to
            LOG.warning("refused %s's connection: the database is not answering", station_id)
            await self._deny(503)
        await self.send({"type": "websocket.accept", "subprotocol": f"ocpp{version}"})
        if previous:
            try:
                await self.channel_layer.send(previous, {"type": "ocpp.replaced"})
            except Exception:  # the claim above already moved the station; the ownership check closes the old one
                LOG.warning("could not tell %s's previous connection it was replaced", station_id, exc_info=True)
        loop = asyncio.get_running_loop()
        self.inbox_worker = loop.create_task(self._drain_inbox())
        if self.channel_layer is not None:
            self.channel_pump = loop.create_task(self._pump_channel())
        fanout.LOCAL.register(station_id, self)
        ownership.holder_watch(self)
        if self.client_cert is not None:  # closed when it is revoked or expires
            certificate_sessions.session_watch(
                self, serial=self.client_cert.serial, not_after=self.client_cert.not_after
            )

    @property
    def held_station_id(self) -> str:
        return self.station.station_id

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """Answers to our calls are routed at once; everything else queues, in order, behind its own storage.

        A station's CALLs are answered only once stored, so each waits for a group commit. Channels hands a consumer
        one frame at a time: handled inline, the station's answer to a dispatch command would wait behind the
        commits of the meter values it sent just before. The inbox keeps the station's own messages strictly
        ordered (stored and answered in arrival order) while CALLRESULT/CALLERROR frames bypass it.

        The inbox is bounded (OCPP_INBOX_MAX): when it is full this handler waits for room, so no further frame is
        taken from this connection meanwhile (Daphne keeps what it already read; TCP holds the rest at the
        station). That cannot deadlock: draining the inbox waits only on the writer, never on an answer from this
        station. A compliant station has one CALL outstanding, so only a flood of SENDs or bad frames fills it.
        """
        received_at = datetime.now(UTC)
        text = message.get("text")
        if text is not None and self.gate.too_big(text):
            await self.send({"type": "websocket.close", "code": CLOSE_TOO_BIG})
            return
        call_id = None
        if text is None:
            error = OcppError("RpcFrameworkError", "OCPP-J frames are text")
            handle = functools.partial(self._reply_error, error, raw="<binary>")
        else:
            try:
                frame = ocpp_j.parse(text, self.station.version)
            except OcppError as exc:
                handle = functools.partial(self._reply_error, exc, raw=text[:10000])
            else:
                if frame.message_type in (ocpp_j.CALLRESULT, ocpp_j.CALLERROR):
                    await self._on_answer(frame)
                    return
                if frame.message_type == ocpp_j.CALL:
                    call_id = frame.message_id
                    handle = functools.partial(self._on_call, frame, received_at, text)
                elif frame.message_type == ocpp_j.SEND:
                    handle = functools.partial(self._on_send, frame, received_at)
                else:  # CALLRESULTERROR: the station rejects one of our CALLRESULTs; nothing to answer
                    reason = (frame.error_code, frame.error_description)
                    handle = functools.partial(self._log, ocpp_j.CALLRESULTERROR, frame.message_id, error=reason)
        # Answers to our calls are exempt (we asked for them). Over the rate a CALL gets an error (not stored: the
        # station sends it again later); anything else is dropped.
        if not self.gate.admit():
            if call_id is not None:
                await self._send(ocpp_j.error_frame(call_id, RATE_LIMITED_CODE, RATE_LIMITED_DESCRIPTION))
            return
        if self.inbox.full():  # only then an await: the common frame costs none
            await self.inbox.put(handle)
        else:
            self.inbox.put_nowait(handle)

    async def _drain_inbox(self) -> None:
        """Handle the station's frames one after another until the socket closes and the queue is empty.

        Frames already received when the station disconnects are still stored (their answers are not sent): the
        station retransmits them and the message-id check stores them once.
        """
        while (handle := await self.inbox.get()) is not None:
            try:
                await handle()
            except Exception:
                LOG.exception("handling a frame from %s failed", self.station.station_id)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        if hasattr(self, "station"):
            if message.get("code") == CLOSE_TOO_BIG:
                self.gate.closed_too_big()
            fanout.LOCAL.unregister(self.station.station_id, self)
            ownership.holder_forget(self)
            self._certificate_forget()
            self.closed = True
            await self._answered_call_handed_over()
            if self.call_worker is not None:
                self.call_worker.cancel()
            await self.inbox.put(None)  # the inbox worker stores what is queued, then stops (waits if it is full)
            self._fail_outstanding("offline")
            try:
                await self.writer.submit(
                    Disconnected(self.station, self.channel_name, datetime.now(UTC), message.get("code"))
                )
            except DatabaseError:
                # The station stays marked online until its next connection claims it or the ownership check
                # finds the socket gone; nothing it sent depends on this record.
                LOG.warning("could not record %s's disconnection: the database is not answering", self.station)
        raise StopConsumer

    # --- channel-layer messages --------------------------------------------------------------------------------

    async def ocpp_call(self, message: dict[str, Any]) -> None:
        """A CSMS-initiated call from ``station_call``; queued so only one is outstanding at a time."""
        if self.closed:  # closing (replaced, certificate revoked): the worker would answer the same
            await self._reply(message, {"status": "offline"})
            return
        calls = self._call_queue()
        if calls.full():  # the caller learns at once rather than queueing behind calls that will time out
            await self._reply(message, {"status": "busy"})
            return
        calls.put_nowait(message)

    async def ocpp_replaced(self, message: dict[str, Any]) -> None:
        """A newer connection took over this station id: close this socket; the new one owns the state."""
        if self.closed:  # told twice (the notice and the ownership check): closed once
            return
        fanout.LOCAL.unregister(self.station.station_id, self)
        ownership.holder_forget(self)
        self._certificate_forget()
        self.closed = True
        self._fail_outstanding("offline")
        await self.send({"type": "websocket.close", "code": CLOSE_REPLACED})

    async def ocpp_certificate_revoked(self, message: dict[str, Any]) -> None:
        """Certificates revoked (chargers.certificate_sessions, from another process): close if this socket
        presented one of them."""
        if self.client_cert is not None and self.client_cert.serial in message.get("serials", ()):
            await self.certificate_close(expired=False, reason=str(message.get("reason", "")))

    async def certificate_close(self, *, expired: bool, reason: str) -> None:
        """The client certificate this socket opened with was revoked or has expired: close it (4003/4004), log the
        reason and store a security event. The station must reconnect with a valid certificate."""
        if self.closed or self.client_cert is None:
            return
        fanout.LOCAL.unregister(self.station.station_id, self)
        ownership.holder_forget(self)
        self._certificate_forget()
        self.closed = True
        self._fail_outstanding("offline")
        serial, station_id = self.client_cert.serial, self.station.station_id
        if expired:
            code, kind, what = CLOSE_CERTIFICATE_EXPIRED, StationEventKind.CERTIFICATE_EXPIRED, "expired"
        else:
            code, kind, what = CLOSE_CERTIFICATE_REVOKED, StationEventKind.CERTIFICATE_REVOKED, "was revoked"
        LOG.warning("closing %s's connection (%d): its client certificate %s %s%s", station_id, code, serial, what,
                    f" ({reason})" if reason else "")  # fmt: skip
        security_event_later(
            kind=kind,
            station_ident=station_id,
            summary=f"connection closed ({code}): client certificate {serial} {what}",
            data={"type": "ConnectionClosed", "serial": serial, "code": code, "reason": reason,
                  "notAfter": self.client_cert.not_after.isoformat()},
        )  # fmt: skip
        with contextlib.suppress(SocketClosed):  # gone already: its disconnect event follows
            await self.send({"type": "websocket.close", "code": code})

    def _certificate_forget(self) -> None:
        if self.client_cert is not None:
            certificate_sessions.session_forget(self, serial=self.client_cert.serial)

    def call_local(self, action: str, payload: dict[str, Any], deadline: float) -> asyncio.Future[dict[str, Any]]:
        """The same queued call as ``ocpp_call``, from this process without a channel-layer hop (chargers.fanout).

        Resolves with the reply ``ocpp_call`` would send (``answered_at``: when the station's answer arrived).
        """
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_result({"status": "offline"})
            return future
        calls = self._call_queue()
        if calls.full():
            future.set_result({"status": "busy"})
        else:
            calls.put_nowait({"action": action, "payload": payload, "deadline": deadline, "future": future})
        return future

    def _call_queue(self) -> asyncio.Queue[dict[str, Any]]:
        """The queue of CSMS calls, and the worker sending them one at a time: made at the first call."""
        if self.calls is None:
            self.calls = asyncio.Queue(settings.OCPP_CALLS_MAX)
            self.call_worker = asyncio.get_running_loop().create_task(self._call_worker())
        return self.calls

    # --- station-initiated messages ----------------------------------------------------------------------------

    async def _on_call(self, frame: Frame, received_at: datetime, text: str) -> None:
        try:
            ocpp_j.validate_station_request(frame, self.station.version)
            payload_storable_check(self.station.version, frame.action, frame.payload, frame.message_id)
            if self.boot_status != BootStatus.ACCEPTED:
                await self._registration_check(frame)
        except OcppError as exc:
            await self._reply_error(exc, raw=text[:10000], frame=frame)
            return
        looked_up = None
        if (prefetch := PREFETCH.get(frame.action)) is not None:  # network look-ups (OCSP): here, not in the batch
            try:
                looked_up = await prefetch(self.station, frame.payload)
            except Exception:  # the handler answers its fail-safe without it
                LOG.exception("looking up %s for %s failed", frame.action, self.station.station_id)
        job = IncomingCall(self.station, frame.message_id, frame.action, frame.payload, received_at, "", looked_up)
        try:
            outcome: CallOutcome = await self.writer.submit(job)
        except Exception as exc:
            # Not stored, so not acknowledged: the station will retry the same message. A database outage is
            # logged once by the writer, not once per message of every station.
            if isinstance(exc, DatabaseError):
                LOG.debug("storing %s from %s failed: %s", frame.action, self.station.station_id, exc)
            else:
                LOG.exception("storing %s from %s failed", frame.action, self.station.station_id)
            await self._send(ocpp_j.error_frame(frame.message_id, "InternalError", "could not store the message"))
            return
        if outcome.error_code:
            await self._send(ocpp_j.error_frame(frame.message_id, outcome.error_code, outcome.error_description))
            return
        if frame.action == "BootNotification" and outcome.payload:
            self.boot_status = outcome.payload["status"]
            self.boot_triggered = set()
            self.boot_read_at = time.monotonic()
        await self._send(ocpp_j.result_frame(frame.message_id, outcome.payload or {}))

    async def _registration_check(self, frame: Frame) -> None:
        """OCPP B02/B03: SecurityError for what a station may not send before it is Accepted.

        Before refusing, the registration status is read again (at most every OCPP_BOOT_RECHECK_S): an operator may
        have accepted the station while it was connected (``station accept``) and the TriggerMessage asking it to boot
        again may have failed; the connection must not go on refusing it until its next boot.
        """
        try:
            boot_refusal_check(self.boot_status, frame.action, self.boot_triggered, frame.message_id)
        except OcppError as refusal:
            now = time.monotonic()
            if now - self.boot_read_at < settings.OCPP_BOOT_RECHECK_S:
                raise
            self.boot_read_at = now
            try:
                self.boot_status = await writer_for_loop(boot_statuses_many).submit(self.station.pk)
            except DatabaseError:
                raise refusal from None
            boot_refusal_check(self.boot_status, frame.action, self.boot_triggered, frame.message_id)

    async def _on_send(self, frame: Frame, received_at: datetime) -> None:
        try:
            ocpp_j.validate_station_request(frame, self.station.version)
        except OcppError as exc:  # SEND is never answered, not even with an error: keep it in the log
            error = (exc.code, exc.description)
            await self._log(ocpp_j.SEND, frame.message_id, frame.action, frame.payload, error=error)
            return
        await self.writer.submit(IncomingSend(self.station, frame.message_id, frame.action, frame.payload, received_at))

    async def _on_answer(self, frame: Frame) -> None:
        if self.pending is not None and self.pending[0] == frame.message_id and not self.pending[1].done():
            self.pending[1].set_result((frame, time.time()))  # answered when the frame arrived
            return
        # An answer to nothing we are waiting for (late, after our timeout): keep it, do not act on it.
        await self._log(frame.message_type, frame.message_id, payload=frame.payload, error=(frame.error_code, ""))

    # --- CSMS-initiated calls ----------------------------------------------------------------------------------

    async def _call_worker(self) -> None:
        assert self.calls is not None
        while True:
            self.call_idle = True
            message = await self.calls.get()
            self.call_idle = False
            try:
                reply, log = await self._call_once(message)
            except asyncio.CancelledError:
                await self._reply(message, {"status": "offline"})
                raise
            except Exception as exc:  # one bad call must not end the worker: every later call would go unanswered
                LOG.exception("call %s to %s failed", message.get("action"), self.station.station_id)
                reply, log = {"status": "error", "code": "InternalError", "description": str(exc)[:200]}, None
            # The caller (a dispatch fan-out waiting on hundreds of stations) gets the answer first; our own record
            # of the exchange follows. The next call to this station still waits for both.
            await self._reply(message, reply)
            if log is not None:
                await log()

    async def _call_once(self, message: dict[str, Any]) -> tuple[dict[str, Any], Callable[[], Awaitable[None]] | None]:
        """Send one call and wait for its answer; returns the reply for the caller and how to log the exchange."""
        action, payload = message["action"], message["payload"]
        remaining = message["deadline"] - time.time()
        if remaining <= 0 or self.closed:
            return {"status": "timeout" if remaining <= 0 else "offline"}, None
        message_id = str(uuid.uuid4())
        future: asyncio.Future[tuple[Frame, float]] = asyncio.get_running_loop().create_future()
        self.pending = (message_id, future)
        sent_at = datetime.now(UTC)
        self.boot_triggered |= boot_triggers(action, payload)
        await self._send(ocpp_j.call_frame(message_id, action, payload))
        # A timer instead of asyncio.wait_for: no wrapper and one wake-up less per call (a dispatch makes a thousand).
        timer = asyncio.get_running_loop().call_later(remaining, _expire, future)
        try:
            answer, answered_at = await future
        except TimeoutError:
            log = functools.partial(
                self._log, ocpp_j.CALL, message_id, action, payload, Direction.OUT, error=("Timeout", ""), at=sent_at
            )
            return {"status": "timeout"}, log
        except _Offline:
            return {"status": "offline"}, None
        finally:
            timer.cancel()
            self.pending = None
        if answer.message_type == ocpp_j.CALLERROR:
            reply = {
                "status": "error",
                "code": answer.error_code,
                "description": answer.error_description,
                "details": answer.error_details,
            }
        else:
            reply = self._check_result(message_id, action, answer.payload)
        reply["answered_at"] = answered_at
        log = functools.partial(
            self._log,
            ocpp_j.CALL,
            message_id,
            action,
            payload,
            Direction.OUT,
            response=answer.payload,
            error=(reply.get("code", ""), reply.get("description", "")),
            at=sent_at,
        )
        return reply, log

    def _check_result(self, message_id: str, action: str, payload: Any) -> dict[str, Any]:
        try:
            ocpp_j.check(ocpp_j.response_validator(self.station.version, action), payload, message_id)
        except OcppError as exc:
            if self.station.version == "2.1":
                asyncio.get_running_loop().create_task(
                    self._send(ocpp_j.result_error_frame(message_id, exc.code, exc.description))
                )
            return {"status": "error", "code": exc.code, "description": f"invalid CALLRESULT: {exc.description}"}
        return {"status": "result", "payload": payload}

    async def _reply(self, message: dict[str, Any], reply: dict[str, Any]) -> None:
        if "future" in message:  # a call_local from this process
            if not message["future"].done():
                message["future"].set_result(reply)
            return
        try:
            await self.channel_layer.send(message["reply_to"], reply)
        except Exception:
            LOG.warning("could not deliver a call reply to %s", message["reply_to"], exc_info=True)

    async def _answered_call_handed_over(self, within_s: float = 1.0) -> None:
        """A station may answer our call and close in the same read: the answer is in, but the call worker has not
        yet handed it to its caller (and logged it). Let it, briefly, rather than report an answered call as offline;
        a call still waiting for its answer is failed at once (none will come now)."""
        deadline = time.monotonic() + within_s
        while self.call_worker is not None and not self.call_worker.done() and not self.call_idle:
            pending = self.pending
            if (pending is not None and not pending[1].done()) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.005)

    def _fail_outstanding(self, status: str) -> None:
        if self.pending is not None and not self.pending[1].done():
            self.pending[1].set_exception(_Offline())
        while self.calls is not None and not self.calls.empty():
            message = self.calls.get_nowait()
            asyncio.get_running_loop().create_task(self._reply(message, {"status": status}))

    # --- helpers -----------------------------------------------------------------------------------------------

    async def _send(self, text: str) -> None:
        if self.closed:
            return
        try:
            await self.send({"type": "websocket.send", "text": text})
        except SocketClosed:  # the socket closed under us; its disconnect event follows and cleans up
            LOG.debug("%s closed before an answer could be sent", self.station.station_id)

    async def _reply_error(self, exc: OcppError, *, raw: str, frame: Frame | None = None) -> None:
        """Log the offending frame, then answer it with the CALLERROR the spec names; the connection stays.

        The answer goes out even if the record cannot be stored (a CALLERROR acknowledges nothing).
        """
        try:
            await self.writer.submit(
                LogEntry(
                    self.station,
                    Direction.IN,
                    frame.message_type if frame else 0,
                    message_id=exc.message_id,
                    action=frame.action if frame else "",
                    payload=frame.payload if frame else None,
                    raw=raw if frame is None else "",
                    error_code=exc.code,
                    error_description=exc.description,
                )
            )
        except DatabaseError:
            pass
        except Exception:  # a record that cannot be built must not cost the station its answer
            LOG.exception("could not log a refused frame from %s", self.station.station_id)
        await self._send(ocpp_j.error_frame(exc.message_id, exc.code, exc.description))

    async def _log(
        self,
        message_type: int,
        message_id: str,
        action: str = "",
        payload: Any = None,
        direction: str = Direction.IN,
        *,
        response: Any = None,
        error: tuple[str, str] = ("", ""),
        at: datetime | None = None,
    ) -> None:
        # A record nobody waits on: not waited for. The station's own frames are queued in order, so each lands
        # before anything the station sends later; records of our calls (direction out) wait for their burst to
        # pause (GroupCommitWriter.submit_nowait).
        now = datetime.now(UTC)
        self.writer.submit_nowait(
            LogEntry(
                self.station,
                direction,
                message_type,
                message_id=message_id,
                action=action,
                payload=payload,
                response=response,
                error_code=error[0],
                error_description=error[1],
                created_at=at or now,
                responded_at=now if at else None,
            ),
            defer=direction == Direction.OUT,
        )

    async def _deny(self, status: int, *, retry_after: int = 0) -> NoReturn:
        if DENIAL_EXTENSION in self.scope.get("extensions", {}):
            headers = [(b"www-authenticate", b'Basic realm="OCPP", charset="UTF-8"')] if status == 401 else []
            if retry_after:
                headers.append((b"retry-after", str(retry_after).encode("ascii")))
            await self.send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await self.send({"type": "websocket.http.response.body", "body": b""})
        else:  # a server without the extension can only refuse with its default (403 in Daphne)
            await self.send({"type": "websocket.close"})
        raise StopConsumer


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _Offline(Exception):
    """The socket went away while a CSMS call was outstanding."""
