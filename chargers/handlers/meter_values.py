"""Meter values (OCPP block J): MeterValues, and the sampled-value rows TransactionEvent carries too.

Values are stored as integers in a base unit (Wh, W, mA, mV, ...), queued as plain tuples for one COPY per batch.
"""

from __future__ import annotations

import math
from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_parse
from chargers.jobs import StationRef
from chargers.models import ENERGY_IMPORT_REGISTER, Transaction
from chargers.ocpp_j import OcppError
from chargers.telemetry import TelemetryUpdate

# OCPP unit -> (stored unit, factor); values are stored as round(value * 10^multiplier * factor).
_UNITS: dict[str, tuple[str, int]] = {
    "Wh": ("Wh", 1),
    "kWh": ("Wh", 1000),
    "W": ("W", 1),
    "kW": ("W", 1000),
    "varh": ("varh", 1),
    "kvarh": ("varh", 1000),
    "var": ("var", 1),
    "kvar": ("var", 1000),
    "VA": ("VA", 1),
    "kVA": ("VA", 1000),
    "Percent": ("Percent", 1),
    "A": ("mA", 1000),
    "V": ("mV", 1000),
    "Hz": ("mHz", 1000),
    "Celsius": ("mCelsius", 1000),
    "K": ("mK", 1000),
}
# Measurands read at location EV that the telemetry feed passes on (TelemetryUpdate.values: "SoC",
# "Temperature@EV"); the rows themselves are stored whatever their location. (OCPP 1.6 had a Temperature measurand;
# 2.0.1 and 2.1 do not, so a 2.x station sends the EV's pack temperature as customData, below.)
EV_MEASURANDS = frozenset({"SoC", "Temperature"})
# The pack temperature (degC) as the edge agent sends it: customData of a sampled value (edge_agent.metering).
EV_VENDOR_ID = "org.openv2g.ev"
PACK_TEMPERATURE_KEY = "packTemperatureCelsius"
# Beyond any pack's physics either way: a value outside is a station's error, dropped (the row itself is kept). The
# bound also keeps ``value * 1000`` finite: a huge float would overflow and fail the whole write batch.
PACK_TEMPERATURE_LIMIT_C = 1000.0


def _pack_temperature_mc(sampled: dict[str, Any]) -> int | None:
    """The EV pack temperature (m degC) a sampled value carries as customData, None if none or not a finite number."""
    custom = sampled.get("customData")
    if not isinstance(custom, dict) or custom.get("vendorId") != EV_VENDOR_ID:
        return None
    value = custom.get(PACK_TEMPERATURE_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if not -273.15 <= value <= PACK_TEMPERATURE_LIMIT_C:
        return None
    return round(value * 1000)


_DEFAULT_UNIT = [
    ("Energy.Reactive", "varh"),
    ("Energy", "Wh"),
    ("Power.Reactive", "var"),
    ("Power.Factor", ""),
    ("Power", "W"),
    ("SoC", "Percent"),
    ("Current", "A"),
    ("Voltage", "V"),
    ("Frequency", "Hz"),
    ("Temperature", "Celsius"),
]


def _unit_for(measurand: str, sampled: dict[str, Any]) -> tuple[str, int, int]:
    uom = sampled.get("unitOfMeasure") or {}
    unit = uom.get("unit") or next((u for prefix, u in _DEFAULT_UNIT if measurand.startswith(prefix)), "Wh")
    stored, factor = _UNITS.get(unit, (unit or "permille", 1000 if not unit else 1))
    return stored, factor, int(uom.get("multiplier", 0))


# MeterValue.value is a bigint: what a stored sample may be, in its base unit.
VALUE_MIN, VALUE_MAX = -(2**63), 2**63 - 1
# 10^18 already overflows a bigint for any value >= 10; beyond this no sample is storable but 0 (and an unbounded
# exponent would make the exact integer path below compute a number of arbitrary size).
_MULTIPLIER_MAX = 18


def sampled_value_int(sampled: dict[str, Any], measurand: str) -> tuple[int, str]:
    """One sampledValue as (integer in the stored unit, stored unit); OcppError if no bigint can hold it.

    Integers with a non-negative multiplier are scaled exactly (a float holds only 53 bits); everything else goes
    through a float, in the order this CSMS always computed it, and is rounded to the unit (Wh, W, mA, ...).
    """
    unit, factor, multiplier = _unit_for(measurand, sampled)
    raw = sampled["value"]
    if abs(multiplier) > _MULTIPLIER_MAX:
        if raw == 0:
            return 0, unit
        raise OcppError("PropertyConstraintViolation", f"unitOfMeasure.multiplier {multiplier} is outside ±18")
    if type(raw) is int and multiplier >= 0:
        value = raw * 10**multiplier * factor
    else:
        scaled = float(raw) * (10.0**multiplier) * factor
        if not math.isfinite(scaled):
            raise OcppError("PropertyConstraintViolation", f"value {raw!r} is beyond what a meter reading can be")
        value = round(scaled)
    if not VALUE_MIN <= value <= VALUE_MAX:
        raise OcppError("PropertyConstraintViolation", f"value {raw!r} {unit} does not fit a 64-bit integer")
    return value, unit


def meter_rows_queue(
    ctx: BatchContext,
    station: StationRef,
    meter_values: list[dict[str, Any]],
    *,
    evse_id: int,
    source: str,
    transaction: Transaction | None = None,
) -> TelemetryUpdate | None:
    """Queue integer MeterValue rows, all or none; returns the newest sample set as a telemetry update."""
    newest: TelemetryUpdate | None = None
    tx_pk = transaction.pk if transaction is not None else None
    rows: list[tuple[Any, ...]] = []
    for mv in meter_values:
        at = datetime_parse(mv["timestamp"], ctx.now)
        values: dict[str, int] = {}
        units: dict[str, str] = {}
        for sv in mv["sampledValue"]:
            measurand = sv.get("measurand", ENERGY_IMPORT_REGISTER)
            value, unit = sampled_value_int(sv, measurand)
            phase, location = sv.get("phase", ""), sv.get("location", "")
            rows.append(
                (station.pk, evse_id, tx_pk, at, ctx.now, measurand, phase, location, sv.get("context", ""), value,
                 unit, source)
            )  # fmt: skip
            name = f"{measurand}.{phase}" if phase else measurand
            # EVSE 0 is the station's main meter: at the grid connection its readings are the Inlet's.
            if location in ("", "Outlet") or (evse_id == 0 and location == "Inlet"):
                values[name] = value
                units[name] = unit
            elif location == "EV" and measurand in EV_MEASURANDS:
                # The EV's own data (ISO 15118-20 via the station, or the edge agent's BMS reading): SoC is the EV's
                # wherever it is read; an EV temperature is the pack's, kept apart from the station's own.
                ev_name = measurand if measurand == "SoC" else f"{name}@EV"
                values.setdefault(ev_name, value)
                units.setdefault(ev_name, unit)
            pack_mc = _pack_temperature_mc(sv)
            if pack_mc is not None:
                values["Temperature@EV"], units["Temperature@EV"] = pack_mc, "mCelsius"
        if newest is None or at >= newest.timestamp:
            newest = TelemetryUpdate(
                station.station_id,
                "meter",
                at,
                evse_id=evse_id,
                values=values,
                units=units,
                transaction_id=transaction.transaction_id if transaction else "",
            )
    ctx.meter_values.extend(rows)
    return newest


def meter_values_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    update = meter_rows_queue(ctx, station, payload["meterValue"], evse_id=payload["evseId"], source="MeterValues")
    if update is not None:
        ctx.telemetry.append(update)
    return {}
