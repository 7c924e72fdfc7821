"""OCPP 2.1 (preferred) / 2.0.1 client built on the ``ocpp`` library, over ``websockets``.

- Connects to ``<csms_url>/<station_id>`` offering ``ocpp2.1`` and ``ocpp2.0.1``, with HTTP Basic auth
  (user = station id). Reconnects with exponential backoff and jitter; a refused handshake (401/403/404) is logged
  as AUTH_REJECTED and retried at the slowest pace.
- One sender per connection drains, in this order, unbuffered messages (status, charging needs, reports,
  heartbeats) and then the durable outbox (TransactionEvent, MeterValues), one CALL at a time as OCPP requires.
- Handlers for the CSMS's requests delegate to ``Station``; answers follow the spec's statuses, and requests the
  agent cannot honour get the CALLERROR the spec names (NotImplemented / NotSupported).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.messages import Call, MessageType, validate_payload
from ocpp.routing import after, on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v201 import ChargePoint as ChargePoint201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from edge_agent import sessionlog as slog
from edge_agent.buffer import OutboxItem
from edge_agent.clock import iso
from edge_agent.profiles import (
    SUPPORTED_DER,
    TRIP_FAMILIES,
    DerRejected,
    ProfileRejected,
    droop_from_der,
    enter_service_from_der,
    parse_dt,
    trips_from_curve,
)
from edge_agent.station import Station

LOG = logging.getLogger("edge_agent.ocpp")
V21_ONLY = {"SetDERControl", "AFRRSignal", "GetDERControl", "ClearDERControl"}
HEARTBEAT_LIMIT_S = 0.5  # a round trip above this makes the asset ineligible for real-time regulation


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def backoff_delays(min_s: float, max_s: float, rng: random.Random) -> Any:
    """Exponential backoff with "equal jitter": half the step fixed, half random (spreads a fleet's reconnects)."""
    step = min_s
    while True:
        yield step / 2 + rng.uniform(0, step / 2)
        step = min(max_s, step * 2)


def _status_info(reason: str, info: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"reason_code": reason[:20]}
    if info:
        out["additional_info"] = info[:512]
    return out


class Handlers:
    """CSMS-initiated requests. Mixed into the 2.1 and 2.0.1 ChargePoint classes."""

    station: Station
    client: OcppClient
    _call_result: Any
    _ocpp_version: str

    async def _handle_call(self, msg: Any) -> Any:
        # ocpp 2.1.0 silently drops unknown actions on 2.1; answer with the CALLERROR the spec names instead.
        if self._ocpp_version == "2.0.1" and msg.action in V21_ONLY:
            raise NotSupportedError(details={"cause": f"{msg.action} is OCPP 2.1 only"})
        if msg.action not in self.route_map:  # type: ignore[attr-defined]
            raise OcppNotImplemented(details={"cause": f"{msg.action} is not implemented by this station"})
        return await super()._handle_call(msg)  # type: ignore[misc]

    # -- smart charging / V2X ------------------------------------------------------------------------------------
    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        st = self.station
        tx = st.tx.transaction_id if st.tx else None
        try:
            st.profiles.validate(charging_profile, evse_id, tx)
        except ProfileRejected as exc:
            slog.log_event(st.id, "profile_rejected", reason=exc.reason_code, info=exc.info)
            return self._call_result.SetChargingProfile(
                status="Rejected", status_info=_status_info(exc.reason_code, exc.info)
            )
        st.profiles.install(charging_profile, evse_id, st.clock.wall())
        modes = sorted(
            {
                p.get("operation_mode", "ChargingOnly")
                for s in charging_profile["charging_schedule"]
                for p in s["charging_schedule_period"]
            }
        )
        slog.log_event(st.id, "profile_set", profile_id=charging_profile["id"], modes=modes)
        return self._call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self, charging_profile_id: int | None = None, charging_profile_criteria: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        removed = self.station.profiles.clear(charging_profile_id, charging_profile_criteria)
        return self._call_result.ClearChargingProfile(status="Accepted" if removed else "Unknown")

    @on("GetChargingProfiles")
    def on_get_charging_profiles(
        self, request_id: int, charging_profile: dict[str, Any], evse_id: int | None = None, **_: Any
    ) -> Any:
        found = self.station.profiles.select(charging_profile, evse_id)
        if not found:
            return self._call_result.GetChargingProfiles(status="NoProfiles")
        by_evse: dict[int, list[dict[str, Any]]] = {}
        for evse, prof in found:
            by_evse.setdefault(evse, []).append(prof)
        items = list(by_evse.items())
        for i, (evse, profs) in enumerate(items):
            self.station.direct.append(
                (
                    "ReportChargingProfiles",
                    {
                        "request_id": request_id,
                        "charging_limit_source": "CSO",
                        "evse_id": evse,
                        "charging_profile": profs,
                        "tbc": i < len(items) - 1,
                    },
                )
            )
        self.station.wakeup()
        return self._call_result.GetChargingProfiles(status="Accepted")

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        st = self.station
        if evse_id not in (0, 1):
            return self._call_result.GetCompositeSchedule(
                status="Rejected", status_info=_status_info("UnknownEvse", f"no EVSE {evse_id}")
            )
        unit = charging_rate_unit or "W"
        start = st.clock.wall().replace(microsecond=0)
        end = start + timedelta(seconds=duration)
        tx = st.tx
        periods: list[dict[str, Any]] = []
        for t in st.profiles.boundaries(start, end, tx.started_wall if tx else None):
            sp = st.profiles.setpoints_at(t, tx.transaction_id if tx else None, tx.started_wall if tx else None)
            limit = st.limits.max_charge_w if sp is None or sp.limit_w is None else sp.limit_w
            scale = 1.0 if unit == "W" else 1.0 / st.p.nominal_voltage_v
            period: dict[str, Any] = {
                "start_period": int((t - start).total_seconds()),
                "limit": round(limit * scale, 1),
            }
            if self._ocpp_version == "2.1" and sp is not None:
                period["operation_mode"] = sp.mode
                if sp.setpoint_w is not None:
                    period["setpoint"] = round(sp.setpoint_w * scale, 1)
                if sp.discharge_limit_w is not None:
                    period["discharge_limit"] = round(sp.discharge_limit_w * scale, 1)
            if not periods or {k: v for k, v in periods[-1].items() if k != "start_period"} != {
                k: v for k, v in period.items() if k != "start_period"
            }:
                periods.append(period)
        schedule = {
            "evse_id": evse_id,
            "duration": duration,
            "schedule_start": iso(start),
            "charging_rate_unit": unit,
            "charging_schedule_period": periods,
        }
        return self._call_result.GetCompositeSchedule(status="Accepted", schedule=schedule)

    @on("SetDERControl")
    def on_set_der_control(self, is_default: bool, control_id: str, control_type: str, **kw: Any) -> Any:
        st = self.station
        if control_type not in SUPPORTED_DER:
            return self._call_result.SetDERControl(
                status="NotSupported", status_info=_status_info("UnsupportedParam", control_type)
            )
        try:
            if control_type == "FreqDroop":
                if not kw.get("freq_droop"):
                    raise DerRejected("Rejected", "freqDroop block missing")
                st.droop = droop_from_der(kw["freq_droop"], st.droop)
            elif control_type in TRIP_FAMILIES:
                if not kw.get("curve"):
                    raise DerRejected("Rejected", "curve missing")
                quantity, over = TRIP_FAMILIES[control_type]
                st.protection.replace_trips(
                    quantity, over, trips_from_curve(control_type, kw["curve"], st.p.nominal_hz)
                )
            elif control_type == "EnterService":
                if not kw.get("enter_service"):
                    raise DerRejected("Rejected", "enterService block missing")
                st.protection.enter_service = enter_service_from_der(kw["enter_service"], st.protection.enter_service)
            elif control_type == "LimitMaxDischarge":
                pct = (kw.get("limit_max_discharge") or {}).get("pct_max_discharge_power")
                if pct is None or not 0 <= pct <= 100:
                    raise DerRejected("Rejected", "pctMaxDischargePower in 0..100 required")
                st.discharge_cap_pct = float(pct)
                st.limits = replace(st.limits, max_discharge_w=st.p.limits.max_discharge_w * pct / 100.0)
        except DerRejected as exc:
            return self._call_result.SetDERControl(
                status=exc.status, status_info=_status_info("InvalidValue", exc.info)
            )
        slog.log_event(st.id, "der_control_set", control_id=control_id, control_type=control_type, default=is_default)
        return self._call_result.SetDERControl(status="Accepted")

    @on("AFRRSignal")
    def on_afrr_signal(self, timestamp: str, signal: int, **_: Any) -> Any:
        at = parse_dt(timestamp)
        if at is None:
            return self._call_result.AFRRSignal(status="Rejected")
        st = self.station
        sp = st.profiles.setpoints_at(
            at, st.tx.transaction_id if st.tx else None, st.tx.started_wall if st.tx else None
        )
        if sp is None or sp.signal_watt_curve is None:
            return self._call_result.AFRRSignal(
                status="Rejected", status_info=_status_info("NoCurve", "no active v2xSignalWattCurve")
            )
        st.profiles.add_afrr(at, signal)
        return self._call_result.AFRRSignal(status="Accepted")

    # -- transactions --------------------------------------------------------------------------------------------
    @on("RequestStartTransaction")
    def on_request_start_transaction(
        self, id_token: dict[str, Any], remote_start_id: int, charging_profile: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        st = self.station
        tx = st.remote_start(id_token, remote_start_id)
        if tx is None:
            return self._call_result.RequestStartTransaction(
                status="Rejected", status_info=_status_info("NoCar" if st.car is None else "Unavailable")
            )
        if charging_profile is not None:
            charging_profile = {**charging_profile, "transaction_id": tx.transaction_id}
            try:
                st.profiles.validate(charging_profile, 1, tx.transaction_id)
                st.profiles.install(charging_profile, 1, st.clock.wall())
            except ProfileRejected as exc:
                slog.log_event(st.id, "profile_rejected", reason=exc.reason_code, info=exc.info)
        return self._call_result.RequestStartTransaction(status="Accepted", transaction_id=tx.transaction_id)

    @on("RequestStopTransaction")
    def on_request_stop_transaction(self, transaction_id: str, **_: Any) -> Any:
        st = self.station
        if st.tx is None or st.tx.transaction_id != transaction_id:
            return self._call_result.RequestStopTransaction(status="Rejected")
        st.end_transaction(trigger="RemoteStop", reason="Remote")
        return self._call_result.RequestStopTransaction(status="Accepted")

    # -- device model --------------------------------------------------------------------------------------------
    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return self._call_result.GetVariables(
            get_variable_result=[self.station.dm.get_variable(r) for r in get_variable_data]
        )

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for req in set_variable_data:
            result = self.station.dm.set_variable(req)
            if result["attribute_status"] == "Accepted" and req["variable"]["name"] == "BasicAuthPassword":
                self.client.password = str(req["attribute_value"])  # used from the next connection on
            results.append(result)
        return self._call_result.SetVariables(set_variable_result=results)

    @on("GetBaseReport")
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> Any:
        if report_base not in ("FullInventory", "ConfigurationInventory", "SummaryInventory"):
            return self._call_result.GetBaseReport(status="NotSupported")
        return self._call_result.GetBaseReport(status="Accepted")

    @after("GetBaseReport")
    def after_get_base_report(self, request_id: int, report_base: str, **_: Any) -> None:
        st = self.station
        st.direct.append(
            (
                "NotifyReport",
                {
                    "request_id": request_id,
                    "generated_at": iso(st.clock.wall()),
                    "seq_no": 0,
                    "tbc": False,
                    "report_data": st.dm.report(report_base),
                },
            )
        )
        st.wakeup()

    # -- operations ----------------------------------------------------------------------------------------------
    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        if evse is not None and evse.get("id") not in (0, 1):
            return self._call_result.ChangeAvailability(status="Rejected", status_info=_status_info("UnknownEvse"))
        status = self.station.set_available(operational_status == "Operative")
        return self._call_result.ChangeAvailability(status=status)

    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        st = self.station
        if evse_id not in (None, 0, 1):
            return self._call_result.Reset(status="Rejected", status_info=_status_info("UnknownEvse"))
        if type == "OnIdle" and st.tx is not None:
            st.pending_reset = "OnIdle"
            return self._call_result.Reset(status="Scheduled")
        return self._call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, type: str, **_: Any) -> None:
        st = self.station
        if type == "Immediate" or st.tx is None:
            if st.tx is not None:
                st.end_transaction(trigger="ResetCommand", reason="ImmediateReset")
            self.client.request_reset()

    @on("TriggerMessage")
    def on_trigger_message(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        if requested_message not in (
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "MeterValues",
            "TransactionEvent",
        ):
            return self._call_result.TriggerMessage(status="NotImplemented")
        if requested_message == "TransactionEvent" and self.station.tx is None:
            return self._call_result.TriggerMessage(status="Rejected")
        return self._call_result.TriggerMessage(status="Accepted")

    @after("TriggerMessage")
    def after_trigger_message(self, requested_message: str, **_: Any) -> None:
        st = self.station
        if requested_message == "BootNotification":
            st.direct.append(("BootNotification", self.client.boot_payload("Triggered")))
        elif requested_message == "Heartbeat":
            st.direct.append(("Heartbeat", {}))
        elif requested_message == "StatusNotification":
            st.queue_status(st.connector_status())
        elif requested_message == "MeterValues":
            st.trigger_meter_values()
        elif requested_message == "TransactionEvent":
            st.trigger_transaction_event()
        st.wakeup()


class StationCP21(Handlers, ChargePoint21):
    pass


class StationCP201(Handlers, ChargePoint201):
    pass


def render(action: str, payload: dict[str, Any], version: str) -> dict[str, Any]:
    """Down-convert the 2.1-shaped payloads the station builds for a 2.0.1 connection."""
    if version != "2.0.1" or action != "NotifyEVChargingNeeds":
        return payload
    needs = dict(payload["charging_needs"])
    for key in ("v2x_charging_parameters", "available_energy_transfer", "control_mode", "mobility_needs_mode"):
        needs.pop(key, None)
    needs["requested_energy_transfer"] = "AC_single_phase"
    return {"evse_id": payload["evse_id"], "charging_needs": needs}


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
    ) -> None:
        self.station = station
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
        return {
            "charging_station": {"model": p.model, "vendor_name": p.vendor, "serial_number": self.station.id},
            "reason": reason,
        }

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
        async with connect(
            self.url,
            subprotocols=[f"ocpp{v}" for v in self.versions],  # type: ignore[misc]
            additional_headers={"Authorization": basic_auth(st.id, self.password)},
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

    async def _call(self, cp: Any, action: str, payload: dict[str, Any]) -> Any:
        st = self.station
        st.link.request_sent(st.clock.monotonic())
        request = getattr(cp._call, action)(**render(action, payload, cp._ocpp_version))
        try:
            result = await cp.call(request, suppress=False, skip_schema_validation=self.skip_validation)
        except TimeoutError:
            slog.log_event(st.id, "no_answer", code=slog.HEARTBEAT_TIMEOUT, level=logging.WARNING, action=action)
            raise
        self._round_trip(action)
        return result

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

    async def _raw_call(self, cp: Any, action: str, payload: dict[str, Any], text: str | None = None) -> dict[str, Any]:
        """Send an already camelCase payload through the library's framing and response matching.

        The hot path (meter values every second, thousands of stations per process) skips the library's
        dataclass/case conversion, which costs more than everything else an agent does per message. Uses the
        ``ocpp`` 2.1.0 ChargePoint internals (call lock, response queue), so the library version is pinned.
        """
        st = self.station
        call = Call(unique_id=str(uuid.uuid4()), action=action, payload=payload)
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
            raise response.to_exception()
        return dict(response.payload)

    async def _boot(self, cp: Any) -> None:
        st = self.station
        while True:
            resp = await self._call(cp, "BootNotification", self.boot_payload(self.boot_reason))
            if resp.status == "Accepted":
                st.on_connected(float(resp.interval or st.p.heartbeat_s))
                return
            # Pending / Rejected: wait as told, answering the CSMS's requests meanwhile (reader keeps running).
            await asyncio.sleep(max(1.0, float(resp.interval or 10)))

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
        while True:
            if st.direct:
                action, payload = st.direct[0]
                try:
                    await self._call(cp, action, payload)
                except OCPPError as exc:
                    slog.log_event(
                        st.id,
                        "call_error",
                        code=slog.CSMS_REJECTED,
                        level=logging.WARNING,
                        action=action,
                        error=exc.code,
                    )
                if action == "BootNotification":
                    st.on_connected(st.p.heartbeat_s)
                st.direct.popleft()
                continue
            item = st.outbox.head()
            if item is not None:
                await self._send_buffered(cp, item)
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _send_buffered(self, cp: Any, item: OutboxItem) -> None:
        st = self.station
        payload = item.payload
        text: str | None = item.text or None
        if item.action == "TransactionEvent" and item.replay and payload.get("offline") is not True:
            payload, text = {**payload, "offline": True}, None
        # From here on a repeat of this message is a replay, whatever happens to this attempt.
        item.replay = True
        try:
            await self._raw_call(cp, item.action, payload, text)
        except OCPPError as exc:
            # Refused for good (malformed or not acceptable): keep it in the log, do not block the queue.
            slog.log_event(
                st.id,
                "buffered_message_refused",
                code=slog.CSMS_REJECTED,
                level=logging.ERROR,
                action=item.action,
                error=exc.code,
                payload=payload,
            )
        st.outbox.done(item)
