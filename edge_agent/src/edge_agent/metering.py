"""Sampled values as the meter resolves them: frequency to the mHz, power to the W, registers to the Wh, the pack
temperature to the BMS's 0.1 degC.

A reading is reported with the resolution of the meter that took it, never coarser (a 0.1 Hz frequency would hide
the whole droop deadband of 0.036 Hz) and never with digits the meter does not have. A driver that knows its
meter's resolution (e.g. from SunSpec scale factors) exposes it as ``meter_resolution``; otherwise the defaults
below apply, those of a revenue-grade meter with a PLL frequency measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_agent.hardware import Measurement


@dataclass(frozen=True, slots=True)
class MeterResolution:
    """Decimal places per measurand (0: whole units, sent as JSON integers)."""

    frequency_hz: int = 3  # mHz
    power_w: int = 0
    energy_wh: int = 0
    voltage_v: int = 1
    soc_pct: int = 1
    temperature_c: int = 1  # the pack temperature the BMS reports (0.1 degC on most packs' CAN frames)


DEFAULT_RESOLUTION = MeterResolution()
# customData of the SoC sample carrying the car's pack temperature (degC); the CSMS reads the same names
# (chargers.handlers.meter_values).
EV_VENDOR_ID = "org.openv2g.ev"
PACK_TEMPERATURE_KEY = "packTemperatureCelsius"


def _at(value: float, places: int) -> float | int:
    return round(value) if places <= 0 else round(value, places)


def sampled_values(m: Measurement, res: MeterResolution = DEFAULT_RESOLUTION) -> list[dict[str, Any]]:
    """OCPP sampledValue entries (camelCase) of one measurement."""

    def sv(value: float, places: int, measurand: str, unit: str) -> dict[str, Any]:
        return {"value": _at(value, places), "measurand": measurand, "unitOfMeasure": {"unit": unit}}

    p = m.power_w
    f = m.frequency_hz if math.isfinite(m.frequency_hz) else 0.0
    out = [
        sv(m.soc * 100.0, res.soc_pct, "SoC", "Percent"),
        sv(m.energy_import_wh, res.energy_wh, "Energy.Active.Import.Register", "Wh"),
        sv(m.energy_export_wh, res.energy_wh, "Energy.Active.Export.Register", "Wh"),
        sv(max(p, 0.0), res.power_w, "Power.Active.Import", "W"),
        sv(max(-p, 0.0), res.power_w, "Power.Active.Export", "W"),
        sv(f, res.frequency_hz, "Frequency", "Hz"),
        sv(m.voltage_v if math.isfinite(m.voltage_v) else 0.0, res.voltage_v, "Voltage", "V"),
    ]
    if m.capacity_wh > 0 and math.isfinite(m.pack_temp_c):
        # The car's pack temperature from its BMS. OCPP 2.0.1 and 2.1 have no Temperature measurand (1.6 had one;
        # their MeasurandEnum refuses it), so it rides on the EV's SoC sample as customData, which both schemas
        # allow on every object. No car, no reading.
        out[0]["customData"] = {"vendorId": EV_VENDOR_ID, PACK_TEMPERATURE_KEY: _at(m.pack_temp_c, res.temperature_c)}
    return out
