"""SunSpec Modbus TCP driver for a bidirectional charger's inverter, meter and battery (``pymodbus``).

Discovery follows SunSpec: the marker "SunS" at holding register 40000 (or 0 / 50000), then a chain of models
(ID, length, body) until ID 0xFFFF. The driver uses these models, at the offsets in ``POINTS`` (relative to the
model's ID register), with SunSpec scale factors (value x 10^SF):

- 701 DER AC Measurement: W (+ = injecting), LNV, Hz, TotWhInj/TotWhAbs (energy registers), TmpSnk, TmpOt.
- 713 DER Storage Capacity: SoC (percent), WHRtg (capacity).
- 704 DER AC Controls: WSetEna, WSet (active-power setpoint, + = inject), WSet_SF.
- 123 Immediate Controls: Conn (1 = connect/energise, 0 = disconnect).

Sign convention inside the agent is the OCPP one (+ = charging), so power is negated at this boundary.
Check ``POINTS`` against the device's model definitions when commissioning a new inverter type.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge_agent.hardware import HardwareError, Measurement

SUNS = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL = 0xFFFF
NOT_IMPLEMENTED_SF = -32768

# model id -> point -> (offset from the model's ID register, type)
POINTS: dict[int, dict[str, tuple[int, str]]] = {
    701: {
        "W": (12, "int16"),
        "LNV": (18, "uint16"),
        "Hz": (19, "uint32"),
        "TotWhInj": (21, "uint64"),
        "TotWhAbs": (25, "uint64"),
        "TmpSnk": (39, "int16"),
        "TmpOt": (42, "int16"),
        "W_SF": (43, "sunssf"),
        "V_SF": (44, "sunssf"),
        "Hz_SF": (45, "sunssf"),
        "TotWh_SF": (46, "sunssf"),
        "Tmp_SF": (47, "sunssf"),
    },
    713: {"WHRtg": (2, "uint16"), "SoC": (4, "uint16"), "WH_SF": (7, "sunssf"), "Pct_SF": (8, "sunssf")},
    704: {"WSetEna": (2, "uint16"), "WSet": (3, "int32"), "WSet_SF": (5, "sunssf")},
    123: {"Conn": (4, "uint16")},
}
MODEL_LENGTHS = {701: 153, 713: 7, 704: 4, 123: 24}  # L values this driver expects at minimum (body length)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def decode(regs: list[int], offset: int, kind: str) -> int:
    if kind == "uint16":
        return regs[offset]
    if kind in ("int16", "sunssf"):
        return _signed(regs[offset], 16)
    if kind == "uint32":
        return (regs[offset] << 16) | regs[offset + 1]
    if kind == "int32":
        return _signed((regs[offset] << 16) | regs[offset + 1], 32)
    if kind == "uint64":
        out = 0
        for i in range(4):
            out = (out << 16) | regs[offset + i]
        return out
    raise ValueError(kind)


def encode(value: int, kind: str) -> list[int]:
    if kind in ("uint16", "int16", "sunssf"):
        return [value & 0xFFFF]
    if kind in ("uint32", "int32"):
        v = value & 0xFFFFFFFF
        return [v >> 16, v & 0xFFFF]
    if kind == "uint64":
        v = value & 0xFFFFFFFFFFFFFFFF
        return [(v >> 48) & 0xFFFF, (v >> 32) & 0xFFFF, (v >> 16) & 0xFFFF, v & 0xFFFF]
    raise ValueError(kind)


@dataclass
class SunSpecHardware:
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    models: dict[int, int] = field(default_factory=dict)  # model id -> address of its ID register
    _client: AsyncModbusTcpClient | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=1)
        if not await client.connect():
            raise HardwareError(f"Modbus device {self.host}:{self.port} not reachable")
        self._client = client
        if not self.models:
            await self._discover(client)
        return client

    async def _read(self, client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
        try:
            rr = await client.read_holding_registers(address, count=count, device_id=self.unit_id)
        except ModbusException as exc:
            raise HardwareError(f"read {address}+{count}: {exc}") from exc
        if rr.isError():
            raise HardwareError(f"read {address}+{count}: {rr}")
        return list(rr.registers)

    async def _discover(self, client: AsyncModbusTcpClient) -> None:
        for base in BASE_ADDRESSES:
            try:
                marker = await self._read(client, base, 2)
            except HardwareError:
                continue
            if tuple(marker) == SUNS:
                break
        else:
            raise HardwareError("no SunSpec marker at 40000, 0 or 50000")
        address = base + 2
        for _ in range(64):
            model_id, length = await self._read(client, address, 2)
            if model_id == END_MODEL:
                break
            self.models[model_id] = address
            address += 2 + length
        missing = set(POINTS) - set(self.models)
        if missing:
            raise HardwareError(f"device lacks SunSpec model(s) {sorted(missing)}")

    async def _model(self, client: AsyncModbusTcpClient, model: int) -> dict[str, int]:
        points = POINTS[model]
        span = max(off + (4 if kind == "uint64" else 2 if kind.endswith("32") else 1) for off, kind in points.values())
        regs = await self._read(client, self.models[model], span)
        return {name: decode(regs, off, kind) for name, (off, kind) in points.items()}

    @staticmethod
    def _scaled(value: int, sf: int) -> float:
        return float(value) * (10.0 ** (0 if sf == NOT_IMPLEMENTED_SF else sf))

    async def read(self) -> Measurement:
        async with self._lock:
            client = await self._connect()
            ac = await self._model(client, 701)
            st = await self._model(client, 713)
        s = self._scaled
        return Measurement(
            power_w=-s(ac["W"], ac["W_SF"]),
            energy_import_wh=s(ac["TotWhAbs"], ac["TotWh_SF"]),
            energy_export_wh=s(ac["TotWhInj"], ac["TotWh_SF"]),
            soc=s(st["SoC"], st["Pct_SF"]) / 100.0,
            pack_temp_c=s(ac["TmpOt"], ac["Tmp_SF"]),
            inverter_temp_c=s(ac["TmpSnk"], ac["Tmp_SF"]),
            voltage_v=s(ac["LNV"], ac["V_SF"]),
            frequency_hz=s(ac["Hz"], ac["Hz_SF"]),
            pll_locked=ac["Hz"] != 0,
            capacity_wh=s(st["WHRtg"], st["WH_SF"]),
        )

    async def apply(self, power_w: float, energize: bool) -> None:
        async with self._lock:
            client = await self._connect()
            ctl = await self._model(client, 704)
            sf = ctl["WSet_SF"]
            raw = round(-power_w / (10.0 ** (0 if sf == NOT_IMPLEMENTED_SF else sf)))
            wset_off = POINTS[704]["WSet"][0]
            ena_off = POINTS[704]["WSetEna"][0]
            conn_off = POINTS[123]["Conn"][0]
            try:
                await client.write_registers(self.models[704] + wset_off, encode(raw, "int32"), device_id=self.unit_id)
                await client.write_register(self.models[704] + ena_off, 1, device_id=self.unit_id)
                await client.write_register(self.models[123] + conn_off, int(energize), device_id=self.unit_id)
            except ModbusException as exc:
                raise HardwareError(f"write setpoint: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
