"""CAN driver (``python-can`` + ``cantools``): the charger's power stage, meter and the car's BMS on one bus.

The frames are the charger model's, not the agent's: they are described by a DBC file (one per charger model, from
its maker; ``edge_agent/data/example_charger.dbc`` is an example only, labelled so). The driver looks in it for
the signals with the roles below: a signal's role is its ``EdgeAgentRole`` attribute if the DBC sets one, else its
name, so a maker's DBC needs only the attribute added, not its signals renamed. Scaling is the DBC's factor and
offset (cantools); units are checked and converted (W/kW, Wh/kWh, Hz/mHz, V, degC, %, ms/s).

Status roles (frames the agent receives): SoC, PackTemperature, PackCapacity, ACPower (+ = import, charging),
InverterTemperature, Energized, PllLocked, GridFrequency, GridVoltage, EnergyImport, EnergyExport. A measurement
whose frames are older than ``stale_after_s`` is a ``HardwareError``.

Command roles (one frame the agent sends every tick): PowerSetpoint (+ = charge), Energize, and optionally Counter
(rolling) and CommandTimeout: the device's revert timer, set to ``revert_s``. A power stage that honours it goes to
0 W by itself when the commands stop (the agent died or hung).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import cantools
from cantools.database.can import Database, Message

from edge_agent.hardware import HardwareError, Measurement
from edge_agent.metering import MeterResolution

EXAMPLE_DBC = Path(__file__).resolve().parent.parent / "data" / "example_charger.dbc"
ROLE_ATTRIBUTE = "EdgeAgentRole"
# role -> the unit its value is wanted in
STATUS_ROLES = {
    "SoC": "%", "PackTemperature": "degC", "PackCapacity": "Wh", "ACPower": "W", "InverterTemperature": "degC",
    "Energized": "", "PllLocked": "", "GridFrequency": "Hz", "GridVoltage": "V", "EnergyImport": "Wh",
    "EnergyExport": "Wh",
}  # fmt: skip
COMMAND_ROLES = {"PowerSetpoint": "W", "Energize": ""}
OPTIONAL_COMMAND_ROLES = {"Counter": "", "CommandTimeout": "ms"}
# DBC unit -> (wanted unit, factor to it)
UNITS = {
    "W": ("W", 1.0), "kW": ("W", 1000.0), "Wh": ("Wh", 1.0), "kWh": ("Wh", 1000.0), "Hz": ("Hz", 1.0),
    "mHz": ("Hz", 0.001), "V": ("V", 1.0), "degC": ("degC", 1.0), "°C": ("degC", 1.0), "%": ("%", 1.0),
    "ms": ("ms", 1.0), "s": ("ms", 1000.0), "": ("", 1.0),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Binding:
    message: Message
    signal: str
    factor: float  # DBC unit -> the role's unit


@dataclass(frozen=True)
class CanMap:
    """Which signal of which frame carries each role, read from a charger model's DBC."""

    db: Database
    status: dict[str, Binding]
    command: dict[str, Binding]

    @classmethod
    def load(cls, path: str | Path) -> CanMap:
        try:
            db = cantools.database.load_file(str(path))
        except (OSError, cantools.database.UnsupportedDatabaseFormatError) as exc:
            raise HardwareError(f"CAN DBC {path}: {exc}") from exc
        if not isinstance(db, Database):
            raise HardwareError(f"{path} is not a CAN database")
        found: dict[str, Binding] = {}
        for message in db.messages:
            for sig in message.signals:
                attr = sig.dbc.attributes.get(ROLE_ATTRIBUTE) if sig.dbc is not None else None
                role = str(attr.value) if attr is not None and attr.value else sig.name
                wanted = {**STATUS_ROLES, **COMMAND_ROLES, **OPTIONAL_COMMAND_ROLES}.get(role)
                if wanted is None:
                    continue
                if role in found:
                    raise HardwareError(f"{path}: role {role} on two signals")
                unit, factor = UNITS.get(sig.unit or "", ("?", 0.0))
                if unit != wanted:
                    raise HardwareError(f"{path}: {message.name}.{sig.name} ({role}) is in {sig.unit!r}, not {wanted}")
                found[role] = Binding(message, sig.name, factor)
        missing = sorted(set(STATUS_ROLES) - set(found)) + sorted(set(COMMAND_ROLES) - set(found))
        if missing:
            raise HardwareError(f"{path}: no signal for {', '.join(missing)}")
        command = {r: b for r, b in found.items() if r in COMMAND_ROLES or r in OPTIONAL_COMMAND_ROLES}
        if len({b.message.frame_id for b in command.values()}) != 1:
            raise HardwareError(f"{path}: the command roles must share one frame")
        return cls(db, {r: b for r, b in found.items() if r in STATUS_ROLES}, command)

    def decimal_places(self, role: str) -> int:
        """Decimal places a status role's signal resolves in its unit (DBC scale x unit factor): 0.1 degC -> 1."""
        binding = self.status[role]
        step = abs(binding.message.get_signal_by_name(binding.signal).scale * binding.factor)
        return max(0, math.ceil(-math.log10(step) - 1e-9)) if step > 0 else 0

    @property
    def command_message(self) -> Message:
        return self.command["PowerSetpoint"].message

    def encode_command(self, power_w: float, energize: bool, counter: int, timeout_ms: float) -> bytes:
        values: dict[str, float] = {}
        for sig in self.command_message.signals:  # a signal without a role is sent at its initial value (or 0)
            values[sig.name] = float(sig.initial) if isinstance(sig.initial, int | float) else 0.0
        c = self.command
        values[c["PowerSetpoint"].signal] = power_w / c["PowerSetpoint"].factor
        values[c["Energize"].signal] = float(energize)
        if "Counter" in c:
            values[c["Counter"].signal] = float(counter)
        if "CommandTimeout" in c:
            values[c["CommandTimeout"].signal] = timeout_ms / c["CommandTimeout"].factor
        return bytes(self.command_message.encode(values, scaling=True, strict=True))


@dataclass
class CanHardware:
    dbc: str | Path = EXAMPLE_DBC
    interface: str = "socketcan"
    channel: str = "can0"
    stale_after_s: float = 1.0
    revert_s: float = 2.0  # CommandTimeout: the power stage's own fallback to 0 W without fresh commands
    bus_kwargs: dict[str, Any] = field(default_factory=dict)
    _map: CanMap | None = None
    _bus: can.BusABC | None = None
    _reader: can.AsyncBufferedReader | None = None
    _notifier: can.Notifier | None = None
    _task: asyncio.Task[None] | None = None
    _state: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # frame id -> (t, signals)
    _counter: int = 0

    @property
    def meter_resolution(self) -> MeterResolution:
        """What the charger's frames resolve (their DBC scaling), so meter values claim no digit the device lacks."""
        places = self.map.decimal_places
        return MeterResolution(
            frequency_hz=places("GridFrequency"),
            power_w=places("ACPower"),
            energy_wh=min(places("EnergyImport"), places("EnergyExport")),
            voltage_v=places("GridVoltage"),
            soc_pct=places("SoC"),
            temperature_c=places("PackTemperature"),
        )

    @property
    def map(self) -> CanMap:
        if self._map is None:
            self._map = CanMap.load(self.dbc)
        return self._map

    def _new_bus(self) -> can.BusABC:
        try:
            return can.Bus(interface=self.interface, channel=self.channel, **self.bus_kwargs)
        except (can.CanError, OSError, ValueError) as exc:
            raise HardwareError(f"CAN {self.interface}:{self.channel}: {exc}") from exc

    async def _open(self) -> can.BusABC:
        if self._bus is not None:
            return self._bus
        _ = self.map  # a bad DBC is an error before anything is sent
        self._bus = self._new_bus()
        self._reader = can.AsyncBufferedReader()
        self._notifier = can.Notifier(self._bus, [self._reader], loop=asyncio.get_running_loop())
        self._task = asyncio.ensure_future(self._receive())
        return self._bus

    async def _receive(self) -> None:
        assert self._reader is not None
        status = {b.message.frame_id: b.message for b in self.map.status.values()}
        while True:
            msg = await self._reader.get_message()
            message = status.get(msg.arbitration_id)
            if message is None or message.is_extended_frame != msg.is_extended_id:
                continue  # other traffic on the bus
            try:
                signals: Any = message.decode(bytes(msg.data), decode_choices=False, scaling=True)
            except (cantools.database.DecodeError, ValueError):
                continue  # a malformed frame: the staleness check catches a device sending only those
            self._state[message.frame_id] = (time.monotonic(), dict(signals))

    async def read(self) -> Measurement:
        await self._open()
        now = time.monotonic()
        frames = {b.message.frame_id: b.message.name for b in self.map.status.values()}
        missing = [name for fid, name in frames.items()
                   if fid not in self._state or now - self._state[fid][0] > self.stale_after_s]  # fmt: skip
        if missing:
            raise HardwareError(f"no recent CAN status frame(s) {', '.join(sorted(missing))}")

        def v(role: str) -> float:
            b = self.map.status[role]
            return float(self._state[b.message.frame_id][1][b.signal]) * b.factor

        return Measurement(
            power_w=v("ACPower"),
            energy_import_wh=v("EnergyImport"),
            energy_export_wh=v("EnergyExport"),
            soc=v("SoC") / 100.0,
            pack_temp_c=v("PackTemperature"),
            inverter_temp_c=v("InverterTemperature"),
            voltage_v=v("GridVoltage"),
            frequency_hz=v("GridFrequency"),
            pll_locked=bool(v("PllLocked")),
            capacity_wh=v("PackCapacity"),
            energized=bool(v("Energized")),
        )

    def _frame(self, power_w: float, energize: bool) -> can.Message:
        self._counter = (self._counter + 1) & 0xFF
        try:
            data = self.map.encode_command(power_w, energize, self._counter, self.revert_s * 1000.0)
        except (cantools.database.EncodeError, ValueError, KeyError) as exc:
            raise HardwareError(f"CAN command {power_w} W: {exc}") from exc
        message = self.map.command_message
        return can.Message(arbitration_id=message.frame_id, data=data, is_extended_id=message.is_extended_frame)

    async def apply(self, power_w: float, energize: bool) -> None:
        bus = await self._open()
        frame = self._frame(power_w if energize else 0.0, energize)
        try:
            bus.send(frame, timeout=0.05)
        except can.CanError as exc:
            raise HardwareError(f"CAN send: {exc}") from exc

    async def stop(self) -> None:
        """The zero / open-contactors command, on a bus handle of its own (the agent's may be the broken part)."""
        frame = self._frame(0.0, False)
        bus = self._new_bus()
        try:
            bus.send(frame, timeout=0.05)
        except can.CanError as exc:
            raise HardwareError(f"CAN send (stop): {exc}") from exc
        finally:
            bus.shutdown()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._notifier is not None:
            self._notifier.stop()
        if self._bus is not None:
            self._bus.shutdown()
        self._bus = self._notifier = self._reader = self._task = None
