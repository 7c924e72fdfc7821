"""One charger: the local loop, protection, fail-safe, transactions and metering, with no network code.

The OCPP client (``edge_agent.ocpp_client``) feeds it CSMS requests and drains its outbox; whoever owns the
timers (``run`` for one station, the fleet simulator for many) calls ``tick()`` every ``tick_s``.

Why one module: ``Station`` is one state machine (transaction, setpoints, protection edges, queues) that each tick
reads and changes as a whole; the pure parts already live apart (``control``, ``protection``, ``failsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from edge_agent import sessionlog as slog
from edge_agent.buffer import Outbox
from edge_agent.clock import Clock, iso
from edge_agent.control import (
    BatteryState,
    Command,
    Departure,
    DroopSettings,
    Limits,
    LookAheadFilter,
    OperationMode,
    Setpoints,
    control_step,
)
from edge_agent.delivery import RetryPolicy
from edge_agent.devicemodel import DeviceModel, default_variables, storage_key
from edge_agent.failsafe import HardwareWatch, LinkMonitor, SafeMode
from edge_agent.firmware import FirmwareUpdater
from edge_agent.frequency import GridSample
from edge_agent.hardware import Hardware, Measurement
from edge_agent.hardware.sim import SimulatedCar
from edge_agent.metering import DEFAULT_RESOLUTION, sampled_values
from edge_agent.profiles import ProfileStore
from edge_agent.protection import EnterService, IslandingSettings, Protection
from edge_agent.revocation import CrlSettings

ISO15118_TIMEOUT_S = 0.25  # PowerDeliveryRes must arrive within 250 ms
REGULATING_MODES = {OperationMode.CENTRAL_SETPOINT, OperationMode.CENTRAL_FREQUENCY, OperationMode.LOCAL_FREQUENCY}


@dataclass(slots=True)
class Transaction:
    transaction_id: str
    started_wall: datetime
    id_token: dict[str, Any] | None = None
    remote_start_id: int | None = None


@dataclass
class StationParams:
    station_id: str
    tick_s: float = 0.1
    nominal_hz: float = 60.0
    nominal_voltage_v: float = 240.0
    limits: Limits = field(default_factory=Limits)
    droop: DroopSettings = field(default_factory=DroopSettings)
    default_mode: str = OperationMode.CHARGING_ONLY
    meter_interval_s: float = 1.0
    idle_meter_interval_s: float = 60.0
    heartbeat_s: float = 300.0
    filter_samples: int = 5
    lookahead_s: float = 0.0
    islanding_clearing_s: float = 1.0
    enter_service: EnterService = field(default_factory=EnterService)
    protection_category: str = "II"  # IEEE 1547 abnormal operating performance category (edge_agent.grid_code)
    phases: int = 1
    islanding: IslandingSettings | None = None  # None: the category's defaults
    link_loss_timeout_s: float = 2.0
    hardware_timeout_s: float = 0.5  # a driver read or write taking longer is a hardware fault
    hardware_recover_s: float = 5.0  # healthy this long before a hardware fault clears (power held at 0 meanwhile)
    safe_mode: SafeMode = field(default_factory=SafeMode)
    vendor: str = "OpenV2G"
    model: str = "EdgeAgent-11kW-BPT"
    message_attempts: int = 3  # OCPPCommCtrlr.MessageAttempts[TransactionEvent] until the CSMS sets it
    message_attempt_interval_s: float = 10.0  # OCPPCommCtrlr.MessageAttemptInterval[TransactionEvent]
    message_attempt_interval_max_s: float = 60.0  # EdgeAgentCtrlr.MessageAttemptIntervalMax
    firmware_trust_anchor: str = ""  # PEM file of the firmware-signing CA(s); empty: every update is refused
    firmware_crl: CrlSettings = field(default_factory=CrlSettings)  # no CRL location: every update is refused


TX = "TransactionEvent"  # the variable instance of the E13 retry settings


class Station:
    """Charger state and its local control. All timing comes from the injected clock."""

    def __init__(
        self,
        params: StationParams,
        *,
        clock: Clock,
        hardware: Hardware,
        grid: Callable[[float], GridSample],
        outbox: Outbox,
        car: SimulatedCar | None = None,
    ) -> None:
        self.p = params
        self.id = params.station_id
        self.clock = clock
        self.hw = hardware
        self.grid = grid
        self.outbox = outbox
        self.car = car
        store = outbox.store
        self.dm = DeviceModel(
            default_variables(vendor=params.vendor, model=params.model, serial=params.station_id),
            load=lambda k: store.kv_get(self.id, k),
            save=lambda k, v: store.kv_set(self.id, k, v),
        )
        self.dm.listeners.append(self._on_variable)
        self.profiles = ProfileStore(nominal_voltage_v=params.nominal_voltage_v)
        self.protection = Protection.for_category(
            params.protection_category,
            nominal_hz=params.nominal_hz,
            phases=params.phases,
            sample_period_s=params.tick_s,
            islanding_clearing_s=params.islanding_clearing_s,
            enter_service=params.enter_service,
            **({"islanding": params.islanding} if params.islanding is not None else {}),
        )
        self.link = LinkMonitor(timeout_s=params.link_loss_timeout_s)
        self.link.started(clock.monotonic())  # not connected yet: the fail-safe grace runs from start-up
        self.hw_watch = HardwareWatch(io_timeout_s=params.hardware_timeout_s, recover_s=params.hardware_recover_s)
        self.filter = LookAheadFilter(size=params.filter_samples, lookahead_s=params.lookahead_s)
        self.droop = params.droop
        self.limits = params.limits
        self.safe_mode = params.safe_mode
        self.retry = RetryPolicy()  # E13 back-off of buffered messages, from the device model (below)
        self.seed_device_model(self._params_as_variables())
        self.tx: Transaction | None = None
        self.discharge_cap_pct = 100.0  # SetDERControl LimitMaxDischarge
        self.available = True
        self.direct: deque[tuple[str, dict[str, Any]]] = deque()  # unbuffered messages for the client
        self.wakeup: Callable[[], None] = lambda: None
        self.outbox.on_put(lambda: self.wakeup())
        self.last: Measurement | None = None
        self.last_command = Command(power_w=0.0)
        self.last_latency_s = 0.0
        self.last_setpoints = Setpoints()
        self.in_failsafe = False
        self.ev_ready = False  # ISO 15118 power delivery confirmed by the car
        self._handshake: asyncio.Task[None] | None = None
        self._next_meter = 0.0
        self._next_heartbeat: float | None = None
        self._last_tick: float | None = None
        self._flags: set[str] = set()  # edge-triggered fault codes currently active
        self._problem_event: int | None = None  # NotifyEvent id of the hardware fault being reported
        self.pending_reset: str | None = None
        self.reset_requested: Callable[[], None] = lambda: None
        self.firmware = FirmwareUpdater(
            self.id,
            clock=clock,
            trust_anchor=params.firmware_trust_anchor,
            crl=params.firmware_crl,
            emit=self.send_direct,
            kv_get=lambda k: store.kv_get(self.id, k),
            kv_set=lambda k, v: store.kv_set(self.id, k, v),
            on_installed=lambda version: self.dm.set_internal("ChargingStation", "FirmwareVersion", version),
        )
        self.dm.set_internal("ChargingStation", "FirmwareVersion", self.firmware.installed_version or "")
        self._recover_transaction()

    def _recover_transaction(self) -> None:
        """A transaction still open from before a crash or power cut ends now, as OCPP asks (PowerLoss)."""
        stored = self.outbox.store.kv_get(self.id, "tx:active")
        if not stored:
            return
        tx_id, _, started = stored.partition("|")
        self.tx = Transaction(transaction_id=tx_id, started_wall=datetime.fromisoformat(started))
        self.end_transaction(trigger="AbnormalCondition", reason="PowerLoss")

    # -- configuration -------------------------------------------------------------------------------------------
    def _apply_device_model(self) -> None:
        dm = self.dm
        self.safe_mode = SafeMode(
            mode=dm.get("EdgeAgentCtrlr", "FailSafeMode"),
            charge_limit_w=dm.number("EdgeAgentCtrlr", "FailSafeChargeLimit"),
        )
        self.link.timeout_s = dm.number("EdgeAgentCtrlr", "LinkLossTimeout")
        self.limits = replace(self.limits, floor_soc=dm.number("EdgeAgentCtrlr", "MobilityFloorSoC") / 100.0)
        db = dm.number("EdgeAgentCtrlr", "DroopDeadband")
        k = dm.number("EdgeAgentCtrlr", "DroopPercent") / 100.0
        self.droop = replace(self.droop, deadband_over_hz=db, deadband_under_hz=db, over_droop=k, under_droop=k)
        self.p.meter_interval_s = dm.number("SampledDataCtrlr", "TxUpdatedInterval")
        self.p.idle_meter_interval_s = dm.number("EdgeAgentCtrlr", "IdleTxUpdatedInterval")
        self.retry = RetryPolicy(
            attempts=int(dm.number("OCPPCommCtrlr", "MessageAttempts", TX)),
            interval_s=dm.number("OCPPCommCtrlr", "MessageAttemptInterval", TX),
            max_interval_s=dm.number("EdgeAgentCtrlr", "MessageAttemptIntervalMax"),
        )

    def _params_as_variables(self) -> dict[tuple[str, ...], str]:
        p = self.p
        return {
            ("SampledDataCtrlr", "TxUpdatedInterval"): str(max(1, round(p.meter_interval_s))),
            ("EdgeAgentCtrlr", "IdleTxUpdatedInterval"): str(max(1, round(p.idle_meter_interval_s))),
            ("EdgeAgentCtrlr", "FailSafeMode"): p.safe_mode.mode,
            ("EdgeAgentCtrlr", "FailSafeChargeLimit"): f"{p.safe_mode.charge_limit_w or p.limits.max_charge_w:g}",
            ("EdgeAgentCtrlr", "LinkLossTimeout"): f"{p.link_loss_timeout_s:g}",
            ("EdgeAgentCtrlr", "MobilityFloorSoC"): f"{p.limits.floor_soc * 100:g}",
            ("EdgeAgentCtrlr", "DroopDeadband"): f"{p.droop.deadband_over_hz:g}",
            ("EdgeAgentCtrlr", "DroopPercent"): f"{p.droop.over_droop * 100:g}",
            ("OCPPCommCtrlr", "MessageAttempts", TX): str(max(1, p.message_attempts)),
            ("OCPPCommCtrlr", "MessageAttemptInterval", TX): f"{p.message_attempt_interval_s:g}",
            ("EdgeAgentCtrlr", "MessageAttemptIntervalMax"): f"{p.message_attempt_interval_max_s:g}",
        }

    def _on_variable(self, component: str, name: str, value: str) -> None:
        self._apply_device_model()
        slog.log_event(self.id, "variable_set", variable=f"{component}.{name}")

    def seed_device_model(self, values: dict[tuple[str, ...], str]) -> None:
        """Local defaults from the agent's config, unless the CSMS already set (and we persisted) a value.

        Keys are (component, variable) or (component, variable, instance).
        """
        for key, value in values.items():
            component, name, *rest = key
            instance = rest[0] if rest else None
            if self.outbox.store.kv_get(self.id, storage_key(component, name, instance)) is None:
                self.dm.set_internal(component, name, value, instance)
        self._apply_device_model()

    # -- car and transactions ------------------------------------------------------------------------------------
    def plug_in(self, car: SimulatedCar) -> None:
        """The car arrived: start a transaction (cable plugged in) and tell the CSMS the driver's plan."""
        self.car = car
        hw_car = getattr(self.hw, "car", "absent")
        if hw_car != "absent":
            self.hw.car = car  # type: ignore[attr-defined]
        self.car_limits_changed()
        self.ev_ready = False
        self.queue_status(self.connector_status())  # Occupied (or still Faulted)
        self.start_transaction(trigger="CablePluggedIn")
        self.queue_charging_needs()
        self._start_handshake()

    def car_limits_changed(self) -> None:
        """The lower of the charger's and the car's power limits (a real car reports its own, and may change them)."""
        car = self.car
        if car is None:
            return
        self.limits = replace(
            self.limits,
            max_charge_w=min(self.p.limits.max_charge_w, car.max_charge_w),
            max_discharge_w=min(self.p.limits.max_discharge_w, car.max_discharge_w) * self.discharge_cap_pct / 100.0,
        )

    def unplug(self) -> None:
        if self.tx is not None:
            self.end_transaction(trigger="EVDeparted", reason="EVDisconnected")
        self.car = None
        if getattr(self.hw, "car", "absent") != "absent":
            self.hw.car = None  # type: ignore[attr-defined]
        self.ev_ready = False
        self.link.lead_s = 0.0  # the hardware applies the fail-safe in the tick that engages it
        self.queue_status(self.connector_status())

    def car_target_w(self, now: float) -> float:
        """The power to ask of a car behind ISO 15118-20 now: the latest command, bounded at once by the fail-safe
        when the link counts as lost at ``now`` (the car hears it in this response, not after the next tick)."""
        w = self.last_command.power_w if self.ev_ready else 0.0
        if self.in_failsafe or self.link.failsafe(now):
            safe = self.safe_mode.setpoints()
            top = self.limits.max_charge_w if safe.limit_w is None else safe.limit_w
            w = min(max(w, 0.0), top)
        return w

    def start_transaction(self, *, trigger: str, id_token: dict[str, Any] | None = None) -> Transaction:
        tx = Transaction(transaction_id=str(uuid.uuid4()), started_wall=self.clock.wall(), id_token=id_token)
        self.tx = tx
        with self.outbox.store.batch():
            self.outbox.store.kv_set(self.id, "tx:active", f"{tx.transaction_id}|{tx.started_wall.isoformat()}")
            self._tx_event("Started", trigger, charging_state="EVConnected", id_token=id_token)
        self._next_meter = self.clock.monotonic() + self._meter_interval()
        slog.log_event(self.id, "transaction_started", transaction_id=tx.transaction_id, trigger=trigger)
        return tx

    def end_transaction(self, *, trigger: str, reason: str) -> None:
        if self.tx is None:
            return
        tx_id = self.tx.transaction_id
        with self.outbox.store.batch():
            self._tx_event(
                "Ended", trigger, charging_state="EVConnected" if self.car else "Idle", stopped_reason=reason
            )
            self.outbox.store.kv_set(self.id, "tx:active", "")
        self.profiles.end_transaction(tx_id)
        self.tx = None
        slog.log_event(self.id, "transaction_ended", transaction_id=tx_id, reason=reason)
        if self.pending_reset == "OnIdle":
            self.pending_reset = None
            self.reset_requested()

    def remote_start(self, id_token: dict[str, Any], remote_start_id: int) -> Transaction | None:
        if self.car is None or not self.available:
            return None
        if self.tx is None:
            self.start_transaction(trigger="RemoteStart", id_token=id_token)
        assert self.tx is not None
        self.tx.id_token, self.tx.remote_start_id = id_token, remote_start_id
        self._tx_event("Updated", "RemoteStart", charging_state="EVConnected", id_token=id_token)
        return self.tx

    def _tx_event(
        self,
        event_type: str,
        trigger: str,
        *,
        charging_state: str | None = None,
        stopped_reason: str | None = None,
        id_token: dict[str, Any] | None = None,
        with_meter: bool = True,
    ) -> None:
        assert self.tx is not None
        # Buffered messages are stored as the wire's camelCase JSON: sent as they are, no per-send conversion.
        info: dict[str, Any] = {"transactionId": self.tx.transaction_id}
        if charging_state is not None:
            info["chargingState"] = charging_state
        if stopped_reason is not None:
            info["stoppedReason"] = stopped_reason
        if self.tx.remote_start_id is not None:
            info["remoteStartId"] = self.tx.remote_start_id
        ts = iso(self.clock.wall())
        payload: dict[str, Any] = {
            "eventType": event_type,
            "timestamp": ts,
            "triggerReason": trigger,
            "seqNo": self.outbox.next_seq_no(self.tx.transaction_id),
            "transactionInfo": info,
            "evse": {"id": 1, "connectorId": 1},
            "offline": not self.link.connected,
        }
        if id_token is not None:
            payload["idToken"] = {
                "idToken": id_token.get("id_token", id_token.get("idToken")),
                "type": id_token["type"],
            }
        if with_meter and self.last is not None:
            payload["meterValue"] = [self.meter_value(self.last, ts)]
        self.outbox.put("TransactionEvent", payload, offline=not self.link.connected)

    def meter_value(self, m: Measurement, ts: str) -> dict[str, Any]:
        res = getattr(self.hw, "meter_resolution", None) or DEFAULT_RESOLUTION  # the driver's meter, if it says
        return {"timestamp": ts, "sampledValue": sampled_values(m, res)}

    def send_direct(self, action: str, payload: dict[str, Any]) -> None:
        """Queue an unbuffered station-initiated message (snake_case payload) and wake the sender."""
        self.direct.append((action, payload))
        self.wakeup()

    def queue_status(self, status: str) -> None:
        self.dm.set_internal("ChargingStation", "AvailabilityState", status)
        self.direct.append(
            (
                "StatusNotification",
                {"timestamp": iso(self.clock.wall()), "connector_status": status, "evse_id": 1, "connector_id": 1},
            )
        )
        self.wakeup()

    def connector_status(self) -> str:
        if self.hw_watch.faulted:
            return "Faulted"
        if not self.available:
            return "Unavailable"
        return "Occupied" if self.car is not None else "Available"

    def queue_charging_needs(self) -> None:
        """NotifyEVChargingNeeds (2.1 form; the client down-converts for 2.0.1)."""
        car = self.car
        if car is None:
            return
        need_wh = max(0.0, (car.target_soc - car.soc) * car.capacity_wh)
        floor_wh = (self.limits.floor_soc - car.soc) * car.capacity_wh
        full_wh = (1.0 - car.soc) * car.capacity_wh
        # A real car's own energy requests (ISO 15118-20 Dynamic mode) win over what the agent derives.
        asked = getattr(car, "requests", None)
        target_wh = asked.target_wh if asked and asked.target_wh is not None else need_wh
        min_wh = asked.min_wh if asked and asked.min_wh is not None else max(0.0, floor_wh)
        max_wh = asked.max_wh if asked and asked.max_wh is not None else full_wh
        min_v2x_wh = asked.min_v2x_wh if asked and asked.min_v2x_wh is not None else floor_wh
        max_v2x_wh = asked.max_v2x_wh if asked and asked.max_v2x_wh is not None else full_wh
        needs: dict[str, Any] = {
            "requested_energy_transfer": "AC_BPT",
            "available_energy_transfer": ["AC_single_phase", "AC_BPT"],
            "control_mode": "DynamicControl",
            "mobility_needs_mode": "EVCC",
            "ac_charging_parameters": {
                "energy_amount": round(max(0.0, target_wh)),
                "ev_min_current": 6,
                "ev_max_current": round(car.max_charge_w / self.p.nominal_voltage_v),
                "ev_max_voltage": round(self.p.nominal_voltage_v * 1.1),
            },
            "v2x_charging_parameters": {
                "max_charge_power": car.max_charge_w,
                "max_discharge_power": car.max_discharge_w,
                "ev_target_energy_request": round(target_wh),
                "ev_min_energy_request": round(min_wh),
                "ev_max_energy_request": round(max_wh),
                "ev_min_v2x_energy_request": round(min_v2x_wh),
                "ev_max_v2x_energy_request": round(max_v2x_wh),
                "target_soc": round(car.target_soc * 100),
            },
        }
        if car.departure is not None:
            needs["departure_time"] = iso(car.departure)
        self.direct.append(
            ("NotifyEVChargingNeeds", {"evse_id": 1, "charging_needs": needs, "timestamp": iso(self.clock.wall())})
        )
        self.wakeup()

    # -- ISO 15118 handshake with the car ------------------------------------------------------------------------
    def _start_handshake(self) -> None:
        if self.car is None or (self._handshake is not None and not self._handshake.done()):
            return
        if not getattr(self.car, "handshake_by_agent", True):
            return  # a real car (edge_agent.secc): its own PowerDeliveryReq sets ev_ready
        with contextlib.suppress(RuntimeError):  # no running loop (pure unit tests): stay not ready
            self._handshake = asyncio.get_running_loop().create_task(self._power_delivery(self.car))

    async def _power_delivery(self, car: SimulatedCar) -> None:
        try:
            await asyncio.wait_for(car.power_delivery(self.last_command.power_w), ISO15118_TIMEOUT_S)
        except TimeoutError:
            slog.log_event(self.id, "ev_timeout", code=slog.EVSE_ERR_TIMEOUT, level=logging.WARNING, timeout_ms=250)
            return
        if self.car is car:
            self.ev_ready = True

    # -- the loop ------------------------------------------------------------------------------------------------
    def _meter_interval(self) -> float:
        regulating = self.last_setpoints.mode in REGULATING_MODES or self.last_command.power_w < 0
        return self.p.meter_interval_s if regulating else self.p.idle_meter_interval_s

    def setpoints(self, now: float) -> Setpoints:
        if self.in_failsafe:
            return self.safe_mode.setpoints()
        if self.car is None or self.tx is None or not self.available or not self.ev_ready:
            return Setpoints(mode=OperationMode.IDLE, limit_w=0.0)
        tx = self.tx
        sp = self.profiles.setpoints_at(self.clock.wall(), tx.transaction_id, tx.started_wall)
        return sp if sp is not None else Setpoints(mode=self.p.default_mode)

    def control(self, now: float, sample: GridSample, m: Measurement, dt: float) -> Command:
        """Sample -> command: protection, fail-safe, setpoints, control law. No I/O."""
        f_hz, v_pu, locked = sample
        prot = self.protection.update(now, f_hz, v_pu, locked)
        if prot.event == "trip":
            slog.log_event(self.id, "trip", code=slog.GRID_TRIP, level=logging.WARNING, by=prot.tripped_by,
                           f_hz=f_hz, v_pu=v_pu)  # fmt: skip
        elif prot.event == "enter_service":
            slog.log_event(self.id, "enter_service")
        failsafe = self.link.failsafe(now)
        if failsafe != self.in_failsafe:
            self.in_failsafe = failsafe
            slog.log_event(
                self.id,
                "failsafe_enter" if failsafe else "failsafe_exit",
                code=slog.FAILSAFE if failsafe else None,
                level=logging.WARNING if failsafe else logging.INFO,
                safe_mode=self.safe_mode.mode,
            )
        sp = self.setpoints(now)
        self.last_setpoints = sp
        f_used = self.filter.push(now, f_hz) if (locked and f_hz > 0.0) else self.p.nominal_hz
        car = self.car
        bat = BatteryState(
            soc=m.soc,
            capacity_wh=m.capacity_wh or (car.capacity_wh if car else 1.0),
            pack_temp_c=m.pack_temp_c,
            inverter_temp_c=m.inverter_temp_c,
        )
        dep = Departure()
        if car is not None and car.departure is not None:
            dep = Departure((car.departure - self.clock.wall()).total_seconds(), car.target_soc)
        cmd = control_step(
            f_used,
            self.last_command.power_w,
            sp,
            self.droop,
            self.limits,
            bat,
            dep,
            dt,
            allow_discharge=not failsafe,
            energize=prot.energize,
            cap_fraction=prot.cap_fraction,
        )
        self._faults(m, locked)
        return cmd

    def _faults(self, m: Measurement, locked: bool) -> None:
        lim = self.limits
        hot = m.pack_temp_c >= lim.pack_max_c or m.inverter_temp_c >= lim.inverter_max_c
        self._edge(slog.OVER_TEMPERATURE, hot, pack_c=round(m.pack_temp_c, 1), inverter_c=round(m.inverter_temp_c, 1))
        self._edge(slog.PLL_SYNC_ERROR, not locked)

    def _edge(self, code: str, active: bool, **detail: Any) -> None:
        if active and code not in self._flags:
            self._flags.add(code)
            slog.log_event(self.id, "fault", code=code, level=logging.WARNING, **detail)
        elif not active and code in self._flags:
            self._flags.discard(code)
            slog.log_event(self.id, "fault_cleared", code=code)

    async def tick(self) -> Command:
        now = self.clock.monotonic()
        dt = self.p.tick_s if self._last_tick is None else max(1e-3, min(now - self._last_tick, 5.0))
        self._last_tick = now
        io_timeout = self.hw_watch.io_timeout_s
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(io_timeout):
                m = await self.hw.read()
        except Exception as exc:  # whatever the driver raised, or TimeoutError: the measurement is gone
            return await self.fault(now, "read", exc, began=began)
        t_sample = time.perf_counter()
        self.last = m
        cmd = self.control(now, self.grid(now), m, dt)
        if self.hw_watch.faulted:  # recovering: held at 0 W, de-energised, until healthy for recover_s
            cmd = Command(power_w=0.0, energize=False, target_w=cmd.target_w, bound="hardware")
        began = loop.time()
        try:
            async with asyncio.timeout(io_timeout):
                await self.hw.apply(cmd.power_w, cmd.energize)
        except Exception as exc:  # the command may not have arrived
            return await self.fault(now, "write", exc, began=began)
        # Wall-time cost from measurement in hand to command delivered (a measurement, not a decision input).
        self.last_latency_s = time.perf_counter() - t_sample
        self.last_command = cmd
        if self.hw_watch.succeeded(now):
            self._hardware_recovered()
        if self.car is not None and not self.ev_ready:
            self._start_handshake()
        self._periodic(now)
        return cmd

    # -- hardware faults -----------------------------------------------------------------------------------------
    async def fault(self, now: float, stage: str, exc: BaseException, *, began: float | None = None) -> Command:
        """A read or write failed or hung (``stage``): 0 W and de-energise through every path the driver still has,
        within the fail-safe deadline counted from ``began`` (loop time the failing call started), and report it.

        On the first failure every path is tried at once (the normal command and the driver's independent
        ``stop()``); while the fault lasts, each tick repeats the normal command (unless that is what just failed)
        and falls back to ``stop()``. If nothing gets through, the device's revert timer stops it: no fresh
        setpoint reaches it.
        """
        loop = asyncio.get_running_loop()
        began = loop.time() if began is None else began
        error = f"{stage}: {type(exc).__name__}: {exc}" if str(exc) else f"{stage}: {type(exc).__name__}"
        if isinstance(exc, TimeoutError):
            error = f"{stage}: no answer within {self.hw_watch.io_timeout_s:g} s"
        new = self.hw_watch.failed(now, error)
        if new:
            slog.log_event(self.id, "fault", code=slog.HARDWARE_FAULT, level=logging.ERROR, stage=stage, error=error)
            self.queue_status("Faulted")
            self._notify_problem(active=True, info=error)
        cmd = Command(power_w=0.0, energize=False, bound="hardware")
        stopped, errors = await self._stop_everything(began, every_path=new, command=new or stage != "write")
        if stopped != self.hw_watch.stopped_by or new:
            self.hw_watch.stopped_by = stopped
            slog.log_event(self.id, "fault_stop", code=slog.HARDWARE_FAULT,
                           level=logging.ERROR if not stopped else logging.WARNING, failed=errors,
                           paths=list(stopped) or "none: the device's revert timer is the last resort")  # fmt: skip
        self.last_command = cmd
        self._periodic(now, metering=False)  # no meter values from a measurement we do not have
        return cmd

    async def _stop_everything(
        self, began: float, *, every_path: bool, command: bool = True
    ) -> tuple[tuple[str, ...], list[str]]:
        """Stop through the driver's paths within the deadline, each cut at the I/O timeout; return the paths that
        got through and the errors of the others. ``every_path``: all at once (the driver's ``stop()`` has a
        connection of its own), so a path that hangs costs no time; else the normal command (if ``command``),
        then ``stop()`` if that failed.
        """
        loop = asyncio.get_running_loop()
        paths: list[tuple[str, Callable[[], Any]]] = []
        if command:
            paths.append(("command", lambda: self.hw.apply(0.0, False)))
        stop = getattr(self.hw, "stop", None)
        if stop is not None:
            paths.append(("stop", stop))
        done: list[str] = []
        errors: list[str] = []
        rounds = [paths] if every_path else [[p] for p in paths]
        for batch in rounds:
            if done:
                break
            left = self.hw_watch.budget_s(loop.time() - began)
            if left <= 0.0:
                errors.append(f"past the {self.hw_watch.deadline_s:g} s deadline")
                break
            tasks = [(name, asyncio.ensure_future(call())) for name, call in batch]
            finished, pending = await asyncio.wait([t for _, t in tasks], timeout=min(self.hw_watch.io_timeout_s, left))
            for task in pending:
                task.cancel()
            for name, task in tasks:
                exc = task.exception() if task in finished else TimeoutError()
                if exc is None:
                    done.append(name)
                else:
                    errors.append(f"{name}: {type(exc).__name__} {exc}".strip())
        return tuple(done), errors

    def _hardware_recovered(self) -> None:
        slog.log_event(self.id, "fault_cleared", code=slog.HARDWARE_FAULT)
        self.queue_status(self.connector_status())
        self._notify_problem(active=False, info="hardware answers again")

    def _notify_problem(self, *, active: bool, info: str) -> None:
        """NotifyEvent on EVSE 1's Problem variable (OCPP 2.0.1 / 2.1 device model), raised or cleared."""
        key = "event:last_id"
        event_id = int(self.outbox.store.kv_get(self.id, key) or 0) + 1
        self.outbox.store.kv_set(self.id, key, str(event_id))
        ts = iso(self.clock.wall())
        data: dict[str, Any] = {
            "event_id": event_id,
            "timestamp": ts,
            "trigger": "Delta",
            "actual_value": "true" if active else "false",
            "tech_code": slog.HARDWARE_FAULT,
            "tech_info": info[:500],
            "event_notification_type": "HardWiredNotification",
            "component": {"name": "EVSE", "evse": {"id": 1}},
            "variable": {"name": "Problem"},
        }
        if not active:
            data["cleared"] = True
            if self._problem_event is not None:
                data["cause"] = self._problem_event
        if self.tx is not None:
            data["transaction_id"] = self.tx.transaction_id
        self._problem_event = event_id if active else None
        self.send_direct("NotifyEvent", {"generated_at": ts, "seq_no": 0, "event_data": [data]})

    def _periodic(self, now: float, *, metering: bool = True) -> None:
        interval = self._meter_interval()
        if self._next_meter - now > interval:  # started regulating: report at the fast rate from now on
            self._next_meter = now + interval
        if metering and self.tx is not None and now >= self._next_meter:
            # A fixed grid (not "now + interval"), so the tick period does not stretch the reporting interval.
            self._next_meter = max(self._next_meter + self._meter_interval(), now - self.p.tick_s)
            self._tx_event("Updated", "MeterValuePeriodic", charging_state=self._charging_state())
        if self._next_heartbeat is not None and now >= self._next_heartbeat and self.link.connected:
            self._next_heartbeat = now + self.p.heartbeat_s
            self.direct.append(("Heartbeat", {}))
            self.wakeup()

    def _charging_state(self) -> str:
        if abs(self.last_command.power_w) > 1.0:
            return "Charging"
        return "SuspendedEVSE" if self.car is not None else "Idle"

    # -- called by the OCPP client -------------------------------------------------------------------------------
    def on_connected(self, heartbeat_s: float) -> None:
        self.p.heartbeat_s = heartbeat_s
        self.dm.set_internal("OCPPCommCtrlr", "HeartbeatInterval", str(int(heartbeat_s)))
        self._next_heartbeat = self.clock.monotonic() + heartbeat_s

    def set_available(self, operative: bool) -> str:
        if operative == self.available:
            return "Accepted"
        self.available = operative
        if not operative and self.tx is not None:
            self.end_transaction(trigger="ChargingStateChanged", reason="Other")
        self.queue_status(self.connector_status())
        return "Accepted"

    def trigger_meter_values(self) -> None:
        m = self.last
        if m is None:
            return
        self.outbox.put(
            "MeterValues",
            {"evseId": 1, "meterValue": [self.meter_value(m, iso(self.clock.wall()))]},
            offline=not self.link.connected,
        )

    def trigger_transaction_event(self) -> None:
        if self.tx is not None:
            self._tx_event("Updated", "Trigger", charging_state=self._charging_state())

    def schedule_heartbeat_now(self) -> None:
        self.direct.append(("Heartbeat", {}))
        self.wakeup()

    def departure_in(self, hours: float) -> datetime:
        return self.clock.wall() + timedelta(hours=hours)
