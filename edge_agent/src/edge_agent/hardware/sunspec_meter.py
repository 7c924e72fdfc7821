"""A depot's main meter over SunSpec Modbus TCP: models 201-204 (single-phase, split-phase, three-phase wye,
three-phase delta), read per the official model definitions shipped in ``pysunspec2`` (the same discovery and
decoding as the inverter driver, ``edge_agent.hardware.sunspec``).

Points read (each with the scale factor its model names): ``W`` (total real power), ``TotWhImp`` / ``TotWhExp``
(energy registers), ``PhV`` (or ``PPV`` where only line-to-line is measured) and ``Hz``. SunSpec meters count ``W``
positive for power delivered to the site (import); a meter wired the other way round (its CT reversed) is set
with ``import_positive = false``. Power and the energy registers are required: a meter that reports either as not
implemented is a fault, never a zero.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient

from edge_agent.hardware import HardwareError
from edge_agent.hardware.sunspec import discover_models, read_block

METER_MODELS = (201, 202, 203, 204)  # single phase, split phase, wye, delta
POINTS = ("W", "TotWhImp", "TotWhExp", "PhV", "PPV", "Hz")
REQUIRED = ("W", "TotWhImp", "TotWhExp")


@dataclass(frozen=True, slots=True)
class SiteMeterReading:
    """Net import (W, + import from the grid, - export), the energy registers (Wh), voltage (V), frequency (Hz)."""

    import_w: float
    energy_import_wh: float
    energy_export_wh: float
    voltage_v: float | None
    frequency_hz: float | None
    model: int


@dataclass
class SunSpecMeter:
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    import_positive: bool = True
    model: int | None = None  # the meter model found (201..204)
    address: int | None = None
    _client: AsyncModbusTcpClient | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _connect(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=1)
        if not await client.connect():
            client.close()
            raise HardwareError(f"site meter {self.host}:{self.port} not reachable")
        try:
            if self.model is None:
                found = await discover_models(client, self.unit_id, checked=METER_MODELS)
                meters = [m for m in METER_MODELS if m in found]
                if not meters:
                    raise HardwareError(f"site meter {self.host}:{self.port} has no SunSpec meter model (201-204)")
                self.model, self.address = meters[0], found[meters[0]]
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self) -> SiteMeterReading:
        async with self._lock:
            try:
                client = await self._connect()
                assert self.model is not None
                assert self.address is not None
                v = await read_block(client, self.unit_id, self.model, self.address, POINTS)
            except (HardwareError, asyncio.CancelledError):
                self._drop()
                raise
        absent = [n for n in REQUIRED if v[n] is None]
        if absent:
            raise HardwareError(f"site meter reports no value for {', '.join(absent)}")
        w, imp, exp = (float(v[n] or 0.0) for n in REQUIRED)
        return SiteMeterReading(
            import_w=w if self.import_positive else -w,
            energy_import_wh=imp if self.import_positive else exp,
            energy_export_wh=exp if self.import_positive else imp,
            voltage_v=v["PhV"] if v["PhV"] is not None else v["PPV"],
            frequency_hz=v["Hz"],
            model=self.model,
        )

    async def close(self) -> None:
        self._drop()
