"""OCPP 2.1 (preferred) / 2.0.1 client built on the ``ocpp`` library, over ``websockets``.

- Connects to ``<csms_url>/<station_id>`` offering ``ocpp2.1`` and ``ocpp2.0.1``, with HTTP Basic auth
  (user = station id). Reconnects with exponential backoff and jitter; a refused handshake (401/403/404) is logged
  as AUTH_REJECTED and retried at the slowest pace.
- One sender per connection drains, in this order, unbuffered messages (status, charging needs, reports,
  heartbeats) and then the durable outbox (TransactionEvent, MeterValues), one CALL at a time as OCPP requires.
- A message the CSMS refuses with a retryable CALLERROR (InternalError: it could not store it) or does not answer
  is sent again after the E13 back-off (:mod:`edge_agent.delivery`), with the SAME message id and payload, so the
  CSMS can tell a retransmission from a new message. An outbox row is deleted only after a CALLRESULT, or after a
  final CALLERROR (the refused message is kept in the session log). Unbuffered messages are retried the same way,
  at most ``MessageAttempts`` times (they are status and reports that a newer one supersedes, not stored data).
- With a :class:`~edge_agent.ledger.Ledger`, every CALLRESULT to a station-initiated CALL is written down.
- The CSMS's requests are answered by the handlers in :mod:`edge_agent.csms_requests`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, MessageType, validate_payload
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from edge_agent import sessionlog as slog
from edge_agent.buffer import OutboxItem
from edge_agent.csms_requests import StationCP21, StationCP201
from edge_agent.delivery import CsmsCallError
from edge_agent.ledger import Ledger
from edge_agent.station import Station

LOG = logging.getLogger("edge_agent.ocpp")
HEARTBEAT_LIMIT_S = 0.5  # a round trip above this makes the asset ineligible for real-time regulation


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def backoff_delays(min_s: float, max_s: float, rng: random.Random) -> Any:
    """Exponential backoff with "equal jitter": half the step fixed, half random (spreads a fleet's reconnects)."""
    step = min_s
    while True:
        yield step / 2 + rng.uniform(0, step / 2)
        step = min(max_s, step * 2)


def render(action: str, payload: dict[str, Any], version: str) -> dict[str, Any]:
    """Down-convert the 2.1-shaped payloads the station builds for a 2.0.1 connection."""
    if version != "2.0.1" or action != "NotifyEVChargingNeeds":
        return payload
    needs = dict(payload["charging_needs"])
    for key in ("v2x_charging_parameters", "available_energy_transfer", "control_mode", "mobility_needs_mode"):
        needs.pop(key, None)
    needs["requested_energy_transfer"] = "AC_single_phase"
    return {"evse_id": payload["evse_id"], "charging_needs": needs}


def wire_payload(cp: Any, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The camelCase payload ``cp.call`` would frame for this snake_case one (fixed once, then resent as is)."""
    request = getattr(cp._call, action)(**render(action, payload, cp._ocpp_version))
    return dict(remove_nones(snake_to_camel_case(serialize_as_dict(request))))


@dataclass(slots=True)
class _DirectHead:
    """The unbuffered message being sent: its id and wire payload stay the same across retransmissions."""

    entry: tuple[str, dict[str, Any]]  # st.direct[0], by identity
    version: str  # the payload's shape depends on the OCPP version of the connection
    message_id: str
    payload: dict[str, Any]
    failures: int = 0
    not_before: float = 0.0


class OcppClient:
    """Keeps one station connected to its CSMS and its queues drained."""

    def __init__(
        self,
        station: Station,
        *,
        csms_url: str,
        password: str,
        versions: list[str] | None = None,
        call_timeout_s: float = 10.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        ping_interval_s: float | None = 20.0,
        validate_messages: bool = True,
        seed: int | None = None,
        ledger: Ledger | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.station = station
        # wss:// only: the CA to trust and, for security profile 3, the client certificate (edge_agent.tls).
        self.ssl_context = ssl_context
        self.url = csms_url.rstrip("/") + "/" + station.id
        self.password = password
        self.versions = versions or ["2.1", "2.0.1"]
        self.call_timeout_s = call_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.ping_interval_s = ping_interval_s or None
        self.skip_validation = not validate_messages
        self._rng = random.Random(seed)
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._stop = asyncio.Event()
        self._reset = False
        self.cp: StationCP21 | StationCP201 | None = None
        self.connects = 0
        self.boot_reason = "PowerUp"
        self._booted = False
        self._slow = 0
        self._slow_logged_at = float("-inf")
        self._closing: asyncio.Future[None] | None = None
        self._failsafe_timer: asyncio.TimerHandle | None = None
        self._failsafe_tick: asyncio.Future[Any] | None = None
        self.ledger = ledger
        self._direct_head: _DirectHead | None = None
        station.wakeup = self._wake.set
        station.reset_requested = self.request_reset  # Reset OnIdle: when the transaction ends

    # -- public --------------------------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return None if self.cp is None else self.cp._ocpp_version

    def stop(self) -> None:
        self._stop.set()
        if self._failsafe_timer is not None:
            self._failsafe_timer.cancel()
            self._failsafe_timer = None
        self._wake.set()
        if self._ws is not None:
            self._closing = asyncio.ensure_future(self._ws.close())

    def drop_connection(self) -> None:
        """Close the socket without stopping (tests and the fail-safe bench use this)."""
        if self._ws is not None:
            self._ws.transport.abort()

    def _arm_failsafe(self) -> None:
        """Run one extra loop step the moment the grace period ends, instead of waiting for the next tick."""
        st = self.station
        loop = asyncio.get_running_loop()

        def _due() -> None:
            self._failsafe_timer = None
            if not st.link.connected:
                self._failsafe_tick = asyncio.ensure_future(st.tick())

        if self._failsafe_timer is not None:
            self._failsafe_timer.cancel()
        self._failsafe_timer = loop.call_later(st.link.timeout_s + 0.002, _due)

    def request_reset(self) -> None:
        """Reboot the OCPP side: close after a short grace so the Reset answer leaves first, then boot again."""
        self._reset = True
        self.boot_reason = "RemoteReset"
        ws = self._ws
        if ws is not None:
            asyncio.get_running_loop().call_later(
                0.2, lambda: setattr(self, "_closing", asyncio.ensure_future(ws.close()))
            )

    def boot_payload(self, reason: str) -> dict[str, Any]:
        p = self.station.p
        charging_station = {"model": p.model, "vendor_name": p.vendor, "serial_number": self.station.id}
        if self.station.firmware.installed_version:
            charging_station["firmware_version"] = self.station.firmware.installed_version
        return {"charging_station": charging_station, "reason": reason}

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff and jitter until ``stop()``."""
        delays = backoff_delays(self.reconnect_min_s, self.reconnect_max_s, self._rng)
        while not self._stop.is_set():
            booted = False
            try:
                booted = await self._session()
            except InvalidStatus as exc:
                code = exc.response.status_code
                slog.log_event(
                    self.station.id, "connect_refused", code=slog.AUTH_REJECTED, level=logging.ERROR, http_status=code
                )
                delays = backoff_delays(self.reconnect_max_s, self.reconnect_max_s, self._rng)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                LOG.debug("%s: connection failed: %r", self.station.id, exc)
            finally:
                was_up = self.station.link.connected
                self.station.link.down(self.station.clock.monotonic())
                self._ws, self.cp = None, None
                if was_up and not self._stop.is_set():
                    self._arm_failsafe()
            if booted:
                delays = backoff_delays(self.reconnect_min_s, self.reconnect_max_s, self._rng)
            if self._stop.is_set():
                break
            if self._reset:
                self._reset = False
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), next(delays))

    # -- one connection ------------------------------------------------------------------------------------------
    async def _session(self) -> bool:
        st = self.station
        # Profile 3 stations authenticate with their certificate alone: no password, no Authorization header.
        headers = {"Authorization": basic_auth(st.id, self.password)} if self.password else {}
        tls: dict[str, Any] = {"ssl": self.ssl_context} if self.url.startswith("wss://") and self.ssl_context else {}
        async with connect(
            self.url,
            subprotocols=[f"ocpp{v}" for v in self.versions],  # type: ignore[misc]
            additional_headers=headers,
            **tls,
            open_timeout=self.call_timeout_s,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_interval_s,
            compression=None,
            proxy=None,
        ) as ws:
            if ws.subprotocol not in ("ocpp2.1", "ocpp2.0.1"):
                slog.log_event(st.id, "no_subprotocol", level=logging.ERROR)
                await ws.close()
                return False
            cls = StationCP21 if ws.subprotocol == "ocpp2.1" else StationCP201
            cp = cls(st.id, ws, response_timeout=self.call_timeout_s)
            cp.station, cp.client = st, self
            self._ws, self.cp = ws, cp
            self.connects += 1
            reader = asyncio.ensure_future(cp.start())
            sender = asyncio.ensure_future(self._send_loop(cp))
            try:
                done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is not None and not isinstance(exc, ConnectionClosed):
                        LOG.warning("%s: session ended: %r", st.id, exc)
            finally:
                for task in (reader, sender):
                    task.cancel()
                await asyncio.gather(reader, sender, return_exceptions=True)
            return self._booted

    def _round_trip(self, action: str) -> None:
        """Log HeartbeatTimeout when a round trip exceeds 500 ms; at most once per 30 s, with a count."""
        st = self.station
        now = st.clock.monotonic()
        rtt = st.link.answer_received(now)
        if rtt is None or rtt <= HEARTBEAT_LIMIT_S:
            return
        self._slow += 1
        if now - self._slow_logged_at >= 30.0:
            slog.log_event(st.id, "slow_round_trip", code=slog.HEARTBEAT_TIMEOUT, level=logging.WARNING,
                           action=action, rtt_ms=round(rtt * 1000), slow_since_last_log=self._slow)  # fmt: skip
            self._slow, self._slow_logged_at = 0, now

    async def _raw_call(
        self,
        cp: Any,
        action: str,
        payload: dict[str, Any],
        text: str | None = None,
        *,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """Send an already camelCase payload through the library's framing and response matching.

        The hot path (meter values every second, thousands of stations per process) skips the library's
        dataclass/case conversion, which costs more than everything else an agent does per message. Uses the
        ``ocpp`` 2.1.0 ChargePoint internals (call lock, response queue), so the library version is pinned.
        ``message_id``: the id of a retransmission (the first transmission's). A CALLERROR raises
        :class:`CsmsCallError` (whatever its code); a CALLRESULT is written to the ledger.
        """
        st = self.station
        call = Call(unique_id=message_id or str(uuid.uuid4()), action=action, payload=payload)
        if not self.skip_validation:
            await validate_payload(call, cp._ocpp_version)
        # The stored JSON text is framed as is: no second encoding of the payload on the hot path.
        frame = f'[2,"{call.unique_id}","{action}",{text}]' if text else call.to_json()
        st.link.request_sent(st.clock.monotonic())
        try:
            async with cp._call_lock:
                await cp._send(frame)
                response = await cp._get_specific_response(call.unique_id, cp._response_timeout)
        except TimeoutError:
            slog.log_event(st.id, "no_answer", code=slog.HEARTBEAT_TIMEOUT, level=logging.WARNING, action=action)
            raise
        self._round_trip(action)
        if response.message_type_id == MessageType.CallError:
            raise CsmsCallError(response.error_code, response.error_description, response.error_details)
        if self.ledger is not None:
            self.ledger.record(station=st.id, action=action, message_id=call.unique_id, payload=payload)
        return dict(response.payload)

    async def _boot(self, cp: Any) -> None:
        st = self.station
        while True:
            payload = wire_payload(cp, "BootNotification", self.boot_payload(self.boot_reason))
            resp = await self._raw_call(cp, "BootNotification", payload)
            if resp.get("status") == "Accepted":
                st.on_connected(float(resp.get("interval") or st.p.heartbeat_s))
                return
            # Pending / Rejected: wait as told, answering the CSMS's requests meanwhile (reader keeps running).
            await asyncio.sleep(max(1.0, float(resp.get("interval") or 10)))

    async def _send_loop(self, cp: Any) -> None:
        st = self.station
        self._booted = False
        await self._boot(cp)
        self._booted = True
        self.boot_reason = "PowerUp"
        st.link.up(st.clock.monotonic())
        if self._failsafe_timer is not None:
            self._failsafe_timer.cancel()
            self._failsafe_timer = None
        slog.log_event(st.id, "connected", ocpp=cp._ocpp_version, queued=len(st.outbox))
        st.queue_status(st.connector_status())
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wait: float | None = None
            if st.direct:
                head = self._direct_head
                due = head.not_before - now if head is not None and head.entry is st.direct[0] else 0.0
                if due <= 0:
                    await self._send_direct(cp)
                    continue
                wait = due
            item = st.outbox.head()
            if item is not None:
                # The head waits out its back-off; the rows behind it wait too (order is the spec's and seqNo's).
                due = item.not_before - now
                if due <= 0:
                    await self._send_buffered(cp, item)
                    continue
                wait = due if wait is None else min(wait, due)
            self._wake.clear()
            if wait is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _send_direct(self, cp: Any) -> None:
        st = self.station
        entry = st.direct[0]
        action = entry[0]
        head = self._direct_head
        if head is None or head.entry is not entry or head.version != cp._ocpp_version:
            head = _DirectHead(entry, cp._ocpp_version, str(uuid.uuid4()), wire_payload(cp, action, entry[1]))
            self._direct_head = head
        try:
            await self._raw_call(cp, action, head.payload, message_id=head.message_id)
        except CsmsCallError as exc:
            head.failures += 1
            # A heartbeat is never worth a retry: the next one is due anyway.
            retry = not exc.final and action != "Heartbeat" and head.failures < st.retry.attempts
            delay = st.retry.delay_s(head.failures)
            slog.log_event(
                st.id,
                "call_error",
                code=slog.CSMS_REJECTED,
                level=logging.WARNING if retry else logging.ERROR,
                action=action,
                error=exc.code,
                description=exc.description,
                message_id=head.message_id,
                failures=head.failures,
                retry_in_s=round(delay, 3) if retry else None,
                payload=None if retry else head.payload,
            )
            if retry:
                head.not_before = asyncio.get_running_loop().time() + delay
                return
        except OCPPError as exc:  # our own payload failed the schema check: it can never be sent as it is
            slog.log_event(st.id, "call_invalid", code=slog.CSMS_REJECTED, level=logging.ERROR, action=action,
                           error=exc.code, description=str(exc.description), payload=head.payload)  # fmt: skip
        except TimeoutError:
            head.failures += 1
            head.not_before = asyncio.get_running_loop().time() + st.retry.delay_s(head.failures)
            raise
        if action == "BootNotification":
            st.on_connected(st.p.heartbeat_s)
        st.direct.popleft()
        self._direct_head = None

    async def _send_buffered(self, cp: Any, item: OutboxItem) -> None:
        """One transmission of the outbox's head: same id and text as every earlier one; deleted only when done."""
        st = self.station
        try:
            await self._raw_call(cp, item.action, item.payload, item.text, message_id=item.message_id)
        except CsmsCallError as exc:
            if not exc.final:
                self._retry_later(item, exc.code, exc.description)
                return
            self._refused(item, exc.code, exc.description, by="csms")
        except OCPPError as exc:  # failed our own schema check: no transmission can ever succeed
            self._refused(item, exc.code, str(exc.description), by="agent")
        except TimeoutError:
            # No answer: it may be stored. The session ends (a silent CSMS is usually a half-open link); after the
            # reconnect the row goes again, unchanged, once its back-off has passed.
            self._retry_later(item, "Timeout", "no answer within the call timeout")
            raise
        st.outbox.done(item)

    def _retry_later(self, item: OutboxItem, error: str, description: str) -> None:
        st = self.station
        item.failures += 1
        delay = st.retry.delay_s(item.failures)
        item.not_before = asyncio.get_running_loop().time() + delay
        # Past MessageAttempts the spec lets a station discard the message. We do not (it is the operator's
        # metering and billing data): we keep retrying at the capped interval and say so at ERROR, every time.
        exhausted = st.retry.exhausted(item.failures)
        slog.log_event(
            st.id,
            "buffered_message_retry_exhausted" if exhausted else "buffered_message_retry",
            code=slog.CSMS_REJECTED,
            level=logging.ERROR if exhausted else logging.WARNING,
            action=item.action,
            error=error,
            description=description,
            message_id=item.message_id,
            failures=item.failures,
            retry_in_s=round(delay, 3),
            queued=len(st.outbox),
        )

    def _refused(self, item: OutboxItem, error: str, description: str, *, by: str) -> None:
        """Refused for good (malformed or not acceptable): keep it in the log, do not block the queue."""
        slog.log_event(
            self.station.id,
            "buffered_message_refused",
            code=slog.CSMS_REJECTED,
            level=logging.ERROR,
            action=item.action,
            error=error,
            description=description,
            refused_by=by,
            message_id=item.message_id,
            payload=item.payload,
        )
