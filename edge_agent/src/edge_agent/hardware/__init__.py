"""The hardware interface: one small protocol, three drivers (simulator, SunSpec Modbus, CAN).

The agent only ever calls ``read()`` for a measurement and ``apply()`` for a power command; how those reach an
inverter, a meter or a BMS is the driver's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Measurement:
    """One reading of meter, inverter and battery. Power: + import (charging), - export (discharging)."""

    power_w: float
    energy_import_wh: float  # Energy.Active.Import.Register
    energy_export_wh: float  # Energy.Active.Export.Register
    soc: float  # 0..1
    pack_temp_c: float
    inverter_temp_c: float
    voltage_v: float
    frequency_hz: float
    pll_locked: bool = True
    capacity_wh: float = 0.0
    energized: bool = True


class Hardware(Protocol):
    async def read(self) -> Measurement: ...

    async def apply(self, power_w: float, energize: bool) -> None: ...

    async def close(self) -> None: ...


class HardwareError(RuntimeError):
    """The device did not answer or answered nonsense."""
