"""SunSpec Modbus TCP driver for a bidirectional charger's inverter, meter and battery (``pymodbus``).

Nothing here is typed in from memory: point offsets, types and scale factors come from the official SunSpec model
definitions as shipped in ``pysunspec2`` (``sunspec2/models/json/model_<id>.json``), counted from the model's ID
register. Discovery follows SunSpec: the marker "SunS" at holding register 40000 (or 0 / 50000), then the chain of
models (ID, L, L registers of body) until ID 0xFFFF. Values are ``raw x 10^SF`` with the SF point the model names
for each point; a point holding its type's "not implemented" value reads as absent.

Models used:

- 701 DER AC Measurement: W (+ = injecting), LNV (or LLV), Hz, TotWhInj/TotWhAbs, TmpSnk, TmpOt.
- 713 DER Storage Capacity: SoC (percent), WHRtg (capacity).
- 704 DER AC Controls: WSetEna, WSetMod (watts), WSet (+ = inject), and the reversion settings WSetRvrt = 0 W,
  WSetEnaRvrt, WSetRvrtTms: the inverter falls back to 0 W by itself ``revert_s`` after the agent's last write.
  Every ``apply`` rewrites the setpoint and the reversion time, which restarts that timer: if the agent dies or
  hangs, the writes stop and the inverter stops discharging on its own.
- 123 Immediate Controls ``Conn`` and/or 703 Enter Service ``ES``: connect (energise) / disconnect.

Sign convention inside the agent is the OCPP one (+ = charging), so power is negated at this boundary.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import sunspec2
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge_agent.hardware import HardwareError, Measurement

SUNS = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL = 0xFFFF
MAX_READ = 125  # registers per Modbus read request
MODEL_DIR = Path(sunspec2.__file__).parent / "models" / "json"

# "Not implemented" value of each SunSpec type (SunSpec Information Model Specification).
NOT_IMPLEMENTED: dict[str, int] = {
    "int16": -0x8000, "uint16": 0xFFFF, "count": 0xFFFF, "acc16": 0, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
    "sunssf": -0x8000, "int32": -0x8000_0000, "uint32": 0xFFFF_FFFF, "acc32": 0, "enum32": 0xFFFF_FFFF,
    "bitfield32": 0xFFFF_FFFF, "int64": -0x8000_0000_0000_0000, "uint64": 0xFFFF_FFFF_FFFF_FFFF, "acc64": 0,
}  # fmt: skip
SIGNED = {"int16", "sunssf", "int32", "int64"}

MEASURE, STORAGE, CONTROLS, ENTER_SERVICE, IMMEDIATE = 701, 713, 704, 703, 123
READ_POINTS = {
    MEASURE: ("InvSt", "ConnSt", "W", "LNV", "LLV", "Hz", "TotWhInj", "TotWhAbs", "TmpSnk", "TmpOt"),
    STORAGE: ("WHRtg", "SoC"),
}
ENERGIZE_POINTS = ((IMMEDIATE, "Conn"), (ENTER_SERVICE, "ES"))  # 1 = connect / permit service, 0 = cease
ENABLED, WATTS = 1, 1  # 704 WSetEna / WSetEnaRvrt ENABLED, WSetMod WATTS
INV_FAULT, CONNECTED = 6, 1  # 701 InvSt FAULT, ConnSt CONNECTED
OPTIONAL = {"InvSt", "ConnSt", "LLV"}


@dataclass(frozen=True, slots=True)
class PointDef:
    name: str
    offset: int  # registers from the model's ID register
    size: int
    type: str
    sf: str | int | None  # the scale-factor point's name, a fixed exponent, or none


@dataclass(frozen=True, slots=True)
class ModelDef:
    id: int
    name: str
    length: int  # L of the fixed part (registers after ID and L)
    points: dict[str, PointDef]


@cache
def model_def(model_id: int) -> ModelDef:
    """The official definition of ``model_id``: every point of its fixed part at its offset from the ID register.

    Nested groups that occur once are flattened as ``Group.Point``; a repeating group ends the fixed part (what
    follows has no fixed offset, and this driver needs none of it).
    """
    path = MODEL_DIR / f"model_{model_id}.json"
    try:
        group = json.loads(path.read_text())["group"]
    except FileNotFoundError as exc:
        raise HardwareError(f"no SunSpec model definition for model {model_id}") from exc
    points: dict[str, PointDef] = {}

    def walk(g: dict[str, Any], offset: int, prefix: str) -> tuple[int, bool]:
        for p in g.get("points", []):
            sf = p.get("sf")
            sf_ref = int(sf) if isinstance(sf, int) or (isinstance(sf, str) and sf.lstrip("-").isdigit()) else sf
            points[prefix + p["name"]] = PointDef(prefix + p["name"], offset, int(p["size"]), p["type"], sf_ref)
            offset += int(p["size"])
        for sub in g.get("groups", []):
            if sub.get("count", 1) != 1:
                return offset, False
            offset, fixed = walk(sub, offset, f"{prefix}{sub['name']}.")
            if not fixed:
                return offset, False
        return offset, True

    end, _ = walk(group, 0, "")
    return ModelDef(model_id, group["name"], end - 2, points)


def decode(regs: list[int], at: int, kind: str, size: int) -> int | None:
    """The integer a point holds (big-endian registers), or None if it holds its type's not-implemented value."""
    raw = 0
    for word in regs[at : at + size]:
        raw = (raw << 16) | word
    bits = 16 * size
    if kind in SIGNED and raw & (1 << (bits - 1)):
        raw -= 1 << bits
    if kind not in NOT_IMPLEMENTED:
        raise HardwareError(f"SunSpec point type {kind} is not supported by this driver")
    return None if raw == NOT_IMPLEMENTED[kind] else raw


def scaled(value: int, sf: int) -> float:
    """value x 10^sf, dividing for negative exponents (287 x 10^-1 is 28.7, not 28.700000000000003)."""
    return float(value * 10**sf) if sf >= 0 else value / 10 ** (-sf)


def encode(value: int, size: int) -> list[int]:
    v = value & ((1 << (16 * size)) - 1)
    return [(v >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


async def read_registers(client: AsyncModbusTcpClient, unit_id: int, address: int, count: int) -> list[int]:
    """Holding registers, in requests of at most 125; any Modbus error is a :class:`HardwareError`."""
    out: list[int] = []
    while count > 0:
        n = min(count, MAX_READ)
        try:
            rr = await client.read_holding_registers(address, count=n, device_id=unit_id)
        except ModbusException as exc:
            raise HardwareError(f"read {address}+{n}: {exc}") from exc
        if rr.isError():
            raise HardwareError(f"read {address}+{n}: {rr}")
        out += rr.registers
        address, count = address + n, count - n
    return out


async def discover_models(client: AsyncModbusTcpClient, unit_id: int, *, checked: Iterable[int]) -> dict[int, int]:
    """Model id -> address of its ID register (the first instance of each), from the "SunS" marker along the chain;
    a model of ``checked`` shorter than its official fixed part is refused."""
    for base in BASE_ADDRESSES:
        try:
            marker = await read_registers(client, unit_id, base, 2)
        except HardwareError:
            continue
        if tuple(marker) == SUNS:
            break
    else:
        raise HardwareError("no SunSpec marker at 40000, 0 or 50000")
    address = base + 2
    found: dict[int, int] = {}
    check = set(checked)
    for _ in range(256):
        model_id, length = await read_registers(client, unit_id, address, 2)
        if model_id == END_MODEL:
            return found
        found.setdefault(model_id, address)  # the first instance of each model
        if model_id in check:
            need = model_def(model_id).length
            if length < need:
                raise HardwareError(f"model {model_id} at {address} has L={length}, its definition needs {need}")
        address += 2 + length
    raise HardwareError("no end-of-models marker (0xFFFF) after 256 models")


async def read_block(
    client: AsyncModbusTcpClient, unit_id: int, model: int, address: int, names: Iterable[str]
) -> dict[str, float | None]:
    """The named points of ``model`` (its ID register at ``address``) in one block read with the scale factors they
    name, scaled; None where a point or its scale factor is not implemented."""
    pts = model_def(model).points
    wanted = [pts[n] for n in names]
    sfs = [pts[p.sf] for p in wanted if isinstance(p.sf, str)]
    first = min(p.offset for p in wanted + sfs)
    last = max(p.offset + p.size for p in wanted + sfs)
    regs = await read_registers(client, unit_id, address + first, last - first)
    raw = {p.name: decode(regs, p.offset - first, p.type, p.size) for p in wanted + sfs}
    out: dict[str, float | None] = {}
    for p in wanted:
        value = raw[p.name]
        sf = p.sf if not isinstance(p.sf, str) else raw[p.sf]
        out[p.name] = None if value is None or sf is None else scaled(value, sf or 0)
    return out


@dataclass
class SunSpecHardware:
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    revert_s: float = 2.0  # the inverter's own fallback to 0 W after the agent's last write (whole seconds, >= 1)
    models: dict[int, int] = field(default_factory=dict)  # model id -> address of its ID register
    _client: AsyncModbusTcpClient | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sf_cache: dict[tuple[int, str], int | None] = field(default_factory=dict)  # static scale factors
    _energized: bool | None = None  # last connect state written (None: not since (re)connecting)

    @property
    def revert_tms(self) -> int:
        """WSetRvrtTms: whole seconds, never longer than asked (but at least 1, the shortest a uint32 s holds)."""
        return max(1, math.floor(self.revert_s))

    # -- connection and discovery --------------------------------------------------------------------------------
    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = await self._open()
        try:
            if not self.models:
                await self._discover(client)
            await self._arm_revert(client)
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    async def _open(self) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=1)
        if not await client.connect():
            client.close()
            raise HardwareError(f"Modbus device {self.host}:{self.port} not reachable")
        return client

    def _drop(self) -> None:
        """Forget the connection (closed, or left mid-request by a cancelled call): the next call reconnects."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._energized = None
        self._sf_cache.clear()

    async def _read(self, client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
        return await read_registers(client, self.unit_id, address, count)

    async def _write(self, client: AsyncModbusTcpClient, address: int, values: list[int]) -> None:
        try:
            rr = await client.write_registers(address, values, device_id=self.unit_id)
        except ModbusException as exc:
            raise HardwareError(f"write {address}+{len(values)}: {exc}") from exc
        if rr.isError():
            raise HardwareError(f"write {address}+{len(values)}: {rr}")

    async def _discover(self, client: AsyncModbusTcpClient) -> None:
        found = await discover_models(
            client, self.unit_id, checked=(*READ_POINTS, CONTROLS, *(m for m, _ in ENERGIZE_POINTS))
        )
        missing = sorted({*READ_POINTS, CONTROLS} - set(found))
        if missing:
            raise HardwareError(f"device lacks SunSpec model(s) {missing}")
        if not any(m in found for m, _ in ENERGIZE_POINTS):
            raise HardwareError("device has neither model 123 (Conn) nor 703 (ES): it cannot be told to disconnect")
        self.models = found

    def _addr(self, model: int, point: str) -> tuple[int, PointDef]:
        p = model_def(model).points[point]
        return self.models[model] + p.offset, p

    async def _arm_revert(self, client: AsyncModbusTcpClient) -> None:
        """Reversion to 0 W, enabled, after ``revert_s``: set once per connection, restarted by every write."""
        at, _ = self._addr(CONTROLS, "WSetEna")
        await self._write(client, at, [ENABLED, WATTS])  # the setpoint is in watts from now on
        await self._write_setpoint(client, 0)

    async def _write_setpoint(self, client: AsyncModbusTcpClient, raw_w: int) -> None:
        """WSetEna..WSetRvrt, then WSetEnaRvrt..WSetRvrtTms: both writes restart the inverter's reversion timer."""
        at, _ = self._addr(CONTROLS, "WSetEna")
        pts = model_def(CONTROLS).points
        assert pts["WSet"].offset == pts["WSetEna"].offset + 2
        assert pts["WSetRvrt"].offset == pts["WSet"].offset + 2
        await self._write(client, at, [ENABLED, WATTS, *encode(raw_w, 2), *encode(0, 2)])
        at_rv, p_rv = self._addr(CONTROLS, "WSetEnaRvrt")
        assert pts["WSetRvrtTms"].offset == p_rv.offset + 1
        await self._write(client, at_rv, [ENABLED, *encode(self.revert_tms, 2)])

    async def _write_energize(self, client: AsyncModbusTcpClient, on: bool) -> None:
        for model, point in ENERGIZE_POINTS:
            if model in self.models:
                at, _ = self._addr(model, point)
                await self._write(client, at, [int(on)])
        self._energized = on

    # -- reading -------------------------------------------------------------------------------------------------
    async def _scale(
        self, client: AsyncModbusTcpClient, model: int, sf: str | int | None, regs: dict[str, int | None]
    ) -> int | None:
        if sf is None or isinstance(sf, int):
            return sf or 0
        if sf in regs:
            return regs[sf]
        key = (model, sf)
        if key not in self._sf_cache:  # a static SF outside the block read: once per connection
            at, p = self._addr(model, sf)
            self._sf_cache[key] = decode(await self._read(client, at, 1), 0, p.type, 1)
        return self._sf_cache[key]

    async def _values(
        self, client: AsyncModbusTcpClient, model: int, names: tuple[str, ...]
    ) -> dict[str, float | None]:
        """The named points, scaled; their scale factors are read in the same block where they lie within it."""
        pts = model_def(model).points
        wanted = [pts[n] for n in names]
        sfs = [pts[p.sf] for p in wanted if isinstance(p.sf, str)]
        first = min(p.offset for p in wanted + sfs)
        last = max(p.offset + p.size for p in wanted + sfs)
        regs = await self._read(client, self.models[model] + first, last - first)
        raw = {p.name: decode(regs, p.offset - first, p.type, p.size) for p in wanted + sfs}
        out: dict[str, float | None] = {}
        for p in wanted:
            value = raw[p.name]
            sf = await self._scale(client, model, p.sf, raw)
            out[p.name] = None if value is None or sf is None else scaled(value, sf)
        return out

    async def read(self) -> Measurement:
        async with self._lock:
            try:
                client = await self._connect()
                ac = await self._values(client, MEASURE, READ_POINTS[MEASURE])
                st = await self._values(client, STORAGE, READ_POINTS[STORAGE])
            except (HardwareError, asyncio.CancelledError):
                self._drop()
                raise
        if ac["LNV"] is None:
            ac["LNV"] = ac["LLV"]
        absent = [f"{m}.{n}" for m, vals in ((MEASURE, ac), (STORAGE, st)) for n, v in vals.items()
                  if v is None and n not in OPTIONAL]  # fmt: skip
        if absent:
            raise HardwareError(f"device reports no value for {', '.join(absent)}")
        if ac["InvSt"] == INV_FAULT:
            raise HardwareError("inverter reports InvSt FAULT")
        v = {**ac, **st}

        def f(name: str) -> float:
            x = v[name]
            assert x is not None
            return x

        return Measurement(
            power_w=0.0 - f("W"),
            energy_import_wh=f("TotWhAbs"),
            energy_export_wh=f("TotWhInj"),
            soc=f("SoC") / 100.0,
            pack_temp_c=f("TmpOt"),
            inverter_temp_c=f("TmpSnk"),
            voltage_v=f("LNV"),
            frequency_hz=f("Hz"),
            pll_locked=f("Hz") != 0.0,
            capacity_wh=f("WHRtg"),
            energized=ac["ConnSt"] == CONNECTED if ac["ConnSt"] is not None else self._energized is not False,
        )

    # -- commanding ----------------------------------------------------------------------------------------------
    async def _wset_raw(self, client: AsyncModbusTcpClient, power_w: float) -> int:
        sf = await self._scale(client, CONTROLS, "WSet_SF", {})
        return round(-power_w / scaled(1, sf or 0))

    async def apply(self, power_w: float, energize: bool) -> None:
        async with self._lock:
            try:
                client = await self._connect()
                if not energize and self._energized is not False:
                    await self._write_energize(client, False)  # de-energise first, before anything else
                await self._write_setpoint(client, await self._wset_raw(client, power_w if energize else 0.0))
                if energize and self._energized is not True:
                    await self._write_energize(client, True)
            except (HardwareError, asyncio.CancelledError):
                self._drop()
                raise

    async def stop(self) -> None:
        """The independent path to 0 W: a connection of its own, then disconnect (123 Conn and/or 703 ES) and a 0 W
        setpoint, each tried whatever the other did. Raises only if nothing got through."""
        if not self.models:
            raise HardwareError("stop: the device's models were never discovered")
        client = await self._open()
        errors: list[str] = []
        try:
            for model, point in ENERGIZE_POINTS:
                if model in self.models:
                    try:
                        await self._write(client, self._addr(model, point)[0], [0])
                    except HardwareError as exc:
                        errors.append(str(exc))
            try:
                await self._write_setpoint(client, 0)
            except HardwareError as exc:
                errors.append(str(exc))
        finally:
            client.close()
        if len(errors) == 1 + sum(m in self.models for m, _ in ENERGIZE_POINTS):
            raise HardwareError("stop: every path failed: " + "; ".join(errors))

    async def close(self) -> None:
        self._drop()
