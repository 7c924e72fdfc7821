"""CAN driver (``python-can``): the charger's power stage and the car's BMS on one bus (e.g. ``can0``, 500 kbit/s).

Frames (little-endian, 11-bit ids; the power stage's firmware implements the same table):

=======  =========  ==============================================================================================
id       direction  payload
=======  =========  ==============================================================================================
0x180    BMS ->     soc uint16 (0.01 %), pack temperature int16 (0.1 C), capacity uint16 (10 Wh), pad
0x190    stage ->   AC power int32 (W, + = import), inverter temperature int16 (0.1 C), flags uint8
                    (bit 0 energised, bit 1 PLL locked), pad
0x1A0    meter ->   frequency uint32 (mHz), voltage uint16 (0.1 V), pad
0x1B0    meter ->   energy import uint32 (Wh), energy export uint32 (Wh)
0x200    -> stage   power command int32 (W, + = charge), flags uint8 (bit 0 energise), sequence uint8, pad
=======  =========  ==============================================================================================

A measurement older than ``stale_after_s`` (any of the four status frames missing) is a ``HardwareError``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import can

from edge_agent.hardware import HardwareError, Measurement

ID_BMS, ID_STAGE, ID_GRID, ID_ENERGY, ID_COMMAND = 0x180, 0x190, 0x1A0, 0x1B0, 0x200
BMS = struct.Struct("<HhHxx")
STAGE = struct.Struct("<ihBx")
GRID = struct.Struct("<IHxx")
ENERGY = struct.Struct("<II")
COMMAND = struct.Struct("<iBBxx")


@dataclass
class CanHardware:
    interface: str = "socketcan"
    channel: str = "can0"
    stale_after_s: float = 1.0
    bus_kwargs: dict[str, Any] = field(default_factory=dict)
    _bus: can.BusABC | None = None
    _reader: can.AsyncBufferedReader | None = None
    _notifier: can.Notifier | None = None
    _task: asyncio.Task[None] | None = None
    _state: dict[int, tuple[float, tuple[Any, ...]]] = field(default_factory=dict)
    _seq: int = 0

    async def _open(self) -> None:
        if self._bus is not None:
            return
        try:
            self._bus = can.Bus(interface=self.interface, channel=self.channel, **self.bus_kwargs)
        except (can.CanError, OSError, ValueError) as exc:
            raise HardwareError(f"CAN {self.interface}:{self.channel}: {exc}") from exc
        self._reader = can.AsyncBufferedReader()
        self._notifier = can.Notifier(self._bus, [self._reader], loop=asyncio.get_running_loop())
        self._task = asyncio.ensure_future(self._receive())

    async def _receive(self) -> None:
        assert self._reader is not None
        decoders = {ID_BMS: BMS, ID_STAGE: STAGE, ID_GRID: GRID, ID_ENERGY: ENERGY}
        while True:
            msg = await self._reader.get_message()
            decoder = decoders.get(msg.arbitration_id)
            if decoder is None or len(msg.data) != decoder.size:
                continue  # other traffic on the bus, or a malformed frame
            self._state[msg.arbitration_id] = (time.monotonic(), decoder.unpack(bytes(msg.data)))

    async def read(self) -> Measurement:
        await self._open()
        now = time.monotonic()
        missing = [hex(i) for i in (ID_BMS, ID_STAGE, ID_GRID, ID_ENERGY)
                   if i not in self._state or now - self._state[i][0] > self.stale_after_s]  # fmt: skip
        if missing:
            raise HardwareError(f"no recent CAN status frame(s) {', '.join(missing)}")
        soc, pack_t, cap = self._state[ID_BMS][1]
        power, inv_t, flags = self._state[ID_STAGE][1]
        f_mhz, v_dv = self._state[ID_GRID][1]
        e_imp, e_exp = self._state[ID_ENERGY][1]
        return Measurement(
            power_w=float(power),
            energy_import_wh=float(e_imp),
            energy_export_wh=float(e_exp),
            soc=soc / 10_000.0,
            pack_temp_c=pack_t / 10.0,
            inverter_temp_c=inv_t / 10.0,
            voltage_v=v_dv / 10.0,
            frequency_hz=f_mhz / 1000.0,
            pll_locked=bool(flags & 0b10),
            capacity_wh=cap * 10.0,
            energized=bool(flags & 0b01),
        )

    async def apply(self, power_w: float, energize: bool) -> None:
        await self._open()
        assert self._bus is not None
        self._seq = (self._seq + 1) & 0xFF
        frame = can.Message(
            arbitration_id=ID_COMMAND,
            data=COMMAND.pack(round(power_w), int(energize), self._seq),
            is_extended_id=False,
        )
        try:
            self._bus.send(frame, timeout=0.05)
        except can.CanError as exc:
            raise HardwareError(f"CAN send: {exc}") from exc

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._notifier is not None:
            self._notifier.stop()
        if self._bus is not None:
            self._bus.shutdown()
        self._bus = self._notifier = self._reader = self._task = None
