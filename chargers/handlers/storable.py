"""What the database can hold, checked at the door: a valid payload the store cannot keep is refused on its own.

The OCPP schemas allow values no column holds: integers beyond 32 or 64 bits (``seqNo``, ``evseId``), meter
readings of 1e308, date-times that leave the calendar once converted to UTC, and ``\\u0000`` in any string, which
PostgreSQL refuses in text and in jsonb alike. Reaching the group-commit writer, one such message rolls its whole
batch back and makes the writer retry every job alone. ``payload_storable_check`` runs on the event loop right
after schema validation (``chargers.consumers``), so the message gets its own CALLERROR and the batch never sees it.

The CALLERROR is PropertyConstraintViolation (OCPP-J: "payload is syntactically correct but at least one field
contains an invalid value"): each of these values is well-formed JSON of the type the schema names, only outside
what this CSMS stores. ``\\u0000`` is refused the same way rather than replaced: the data of record is stored as the
station sent it or not at all, and an altered idToken or transactionId would silently become another one.

``COLUMNS`` is the one table of every model column the handlers fill from an OCPP payload, with the action and
the JSON path it comes from. The check uses it for integer ranges and string lengths; the tests check it against
the schemas the ``ocpp`` package ships (every column at least as wide as the schema's maxLength or longest enum).
Ranges are PostgreSQL's on every database (SQLite would hold more), so a message is refused or stored alike on both.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import ocpp.messages
from django.apps import apps
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import CharField, Field

from chargers import ocpp_j
from chargers.handlers.common import datetime_parse
from chargers.handlers.meter_values import sampled_value_int
from chargers.models import ENERGY_IMPORT_REGISTER
from chargers.ocpp_j import OcppError

INTEGER_RANGES: dict[str, tuple[int, int]] = BaseDatabaseOperations.integer_field_ranges


@dataclass(frozen=True)
class Column:
    """``field`` ("Model.name") is filled from ``path`` of ``action``'s request; "[]" steps into every item of a
    list. ``number``: a JSON number stored rounded in an integer column."""

    field: str
    action: str
    path: str
    number: bool = False

    @functools.cached_property
    def model_field(self) -> Field[Any, Any]:
        model, name = self.field.split(".")
        return cast("Field[Any, Any]", apps.get_model("chargers", model)._meta.get_field(name))


_DER_BLOCKS = ("curve", "enterService", "fixedPFAbsorb", "fixedPFInject", "fixedVar", "freqDroop", "gradient",
               "limitMaxDischarge")  # fmt: skip
_METER_COLUMNS = ("measurand", "phase", "location", "context")
_NEEDS = "NotifyEVChargingNeeds"

COLUMNS: tuple[Column, ...] = (
    # BootNotification (handlers.provisioning.station_boot)
    Column("Station.vendor", "BootNotification", "chargingStation.vendorName"),
    Column("Station.model", "BootNotification", "chargingStation.model"),
    Column("Station.serial_number", "BootNotification", "chargingStation.serialNumber"),
    Column("Station.firmware_version", "BootNotification", "chargingStation.firmwareVersion"),
    Column("Station.last_boot_reason", "BootNotification", "reason"),
    # NotifyReport (handlers.provisioning.device_report_record)
    Column("DeviceVariable.component", "NotifyReport", "reportData[].component.name"),
    Column("DeviceVariable.component_instance", "NotifyReport", "reportData[].component.instance"),
    Column("DeviceVariable.evse_id", "NotifyReport", "reportData[].component.evse.id"),
    Column("DeviceVariable.connector_id", "NotifyReport", "reportData[].component.evse.connectorId"),
    Column("DeviceVariable.variable", "NotifyReport", "reportData[].variable.name"),
    Column("DeviceVariable.variable_instance", "NotifyReport", "reportData[].variable.instance"),
    Column("DeviceVariable.attribute_type", "NotifyReport", "reportData[].variableAttribute[].type"),
    Column("DeviceVariable.value", "NotifyReport", "reportData[].variableAttribute[].value"),
    Column("DeviceVariable.mutability", "NotifyReport", "reportData[].variableAttribute[].mutability"),
    Column("DeviceVariable.data_type", "NotifyReport", "reportData[].variableCharacteristics.dataType"),
    Column("DeviceVariable.unit", "NotifyReport", "reportData[].variableCharacteristics.unit"),
    # StatusNotification (handlers.availability.connector_status_record)
    Column("Evse.evse_id", "StatusNotification", "evseId"),
    Column("Connector.connector_id", "StatusNotification", "connectorId"),
    Column("Connector.status", "StatusNotification", "connectorStatus"),
    # TransactionEvent (handlers.transactions, Transaction.event_apply)
    Column("Transaction.transaction_id", "TransactionEvent", "transactionInfo.transactionId"),
    Column("Transaction.evse_id", "TransactionEvent", "evse.id"),
    Column("Transaction.connector_id", "TransactionEvent", "evse.connectorId"),
    Column("Transaction.id_token", "TransactionEvent", "idToken.idToken"),
    Column("Transaction.charging_state", "TransactionEvent", "transactionInfo.chargingState"),
    Column("Transaction.stopped_reason", "TransactionEvent", "transactionInfo.stoppedReason"),
    Column("Transaction.last_seq_no", "TransactionEvent", "seqNo"),
    Column("TransactionEvent.seq_no", "TransactionEvent", "seqNo"),
    Column("TransactionEvent.event_type", "TransactionEvent", "eventType"),
    Column("TransactionEvent.trigger_reason", "TransactionEvent", "triggerReason"),
    Column("TransactionEvent.charging_state", "TransactionEvent", "transactionInfo.chargingState"),
    Column("MeterValue.evse_id", "TransactionEvent", "evse.id"),
    *(Column(f"MeterValue.{name}", action, f"meterValue[].sampledValue[].{name}")
      for action in ("TransactionEvent", "MeterValues") for name in _METER_COLUMNS),
    *(Column("MeterValue.unit", action, "meterValue[].sampledValue[].unitOfMeasure.unit")
      for action in ("TransactionEvent", "MeterValues")),
    # MeterValue.value and Transaction.energy_wh: meter_values.sampled_value_int, checked for every sampledValue
    # MeterValues (handlers.meter_values)
    Column("MeterValue.evse_id", "MeterValues", "evseId"),
    # NotifyEVChargingNeeds (handlers.smart_charging.ev_charging_needs_record)
    Column("EvChargingNeeds.evse_id", _NEEDS, "evseId"),
    Column("EvChargingNeeds.requested_energy_transfer", _NEEDS, "chargingNeeds.requestedEnergyTransfer"),
    Column("EvChargingNeeds.control_mode", _NEEDS, "chargingNeeds.controlMode"),
    Column("EvChargingNeeds.mobility_needs_mode", _NEEDS, "chargingNeeds.mobilityNeedsMode"),
    *(Column(f"EvChargingNeeds.{name}", _NEEDS, f"chargingNeeds.{key}", number=True)
      for name, key in (
          ("energy_amount_wh", "acChargingParameters.energyAmount"),
          ("energy_amount_wh", "dcChargingParameters.energyAmount"),
          ("ev_max_power_w", "dcChargingParameters.evMaxPower"),
          ("min_charge_power_w", "v2xChargingParameters.minChargePower"),
          ("max_charge_power_w", "v2xChargingParameters.maxChargePower"),
          ("min_discharge_power_w", "v2xChargingParameters.minDischargePower"),
          ("max_discharge_power_w", "v2xChargingParameters.maxDischargePower"),
          ("ev_target_energy_request_wh", "v2xChargingParameters.evTargetEnergyRequest"),
          ("ev_min_energy_request_wh", "v2xChargingParameters.evMinEnergyRequest"),
          ("ev_max_energy_request_wh", "v2xChargingParameters.evMaxEnergyRequest"),
          ("ev_min_v2x_energy_request_wh", "v2xChargingParameters.evMinV2XEnergyRequest"),
          ("ev_max_v2x_energy_request_wh", "v2xChargingParameters.evMaxV2XEnergyRequest"),
      )),
    Column("EvChargingNeeds.target_soc", _NEEDS, "chargingNeeds.v2xChargingParameters.targetSoC"),
    # ReportChargingProfiles (handlers.smart_charging.charging_profiles_report_record)
    Column("ChargingProfile.evse_id", "ReportChargingProfiles", "evseId"),
    Column("ChargingProfile.profile_id", "ReportChargingProfiles", "chargingProfile[].id"),
    Column("ChargingProfile.stack_level", "ReportChargingProfiles", "chargingProfile[].stackLevel"),
    Column("ChargingProfile.purpose", "ReportChargingProfiles", "chargingProfile[].chargingProfilePurpose"),
    Column("ChargingProfile.kind", "ReportChargingProfiles", "chargingProfile[].chargingProfileKind"),
    Column("ChargingProfile.limit_source", "ReportChargingProfiles", "chargingLimitSource"),
    # DER control, 2.1 (handlers.der)
    Column("DerAlarm.control_type", "NotifyDERAlarm", "controlType"),
    Column("DerAlarm.grid_event_fault", "NotifyDERAlarm", "gridEventFault"),
    Column("DerAlarm.extra_info", "NotifyDERAlarm", "extraInfo"),
    *(Column("DerControl.control_id", "ReportDERControl", f"{block}[].id") for block in _DER_BLOCKS),
    Column("DerControl.control_type", "ReportDERControl", "curve[].curveType"),
)  # fmt: skip


def payload_storable_check(version: str, action: str, payload: dict[str, Any], message_id: str) -> None:
    """Raise the OcppError to answer if the store cannot hold ``payload`` (schema-valid) exactly as sent."""
    try:
        _shape_check(payload)
        for column, parts, low_high in _columns_of(action):
            for value in values_at(payload, parts):
                _column_check(column, value, low_high)
        if action in ("MeterValues", "TransactionEvent"):
            for sampled in values_at(payload, ("meterValue[]", "sampledValue[]")):
                sampled_value_int(sampled, sampled.get("measurand", ENERGY_IMPORT_REGISTER))
        for path in _date_time_paths(version, action):
            for value in values_at(payload, path):
                datetime_parse(value, _NEVER)
    except OcppError as exc:
        raise OcppError(exc.code, exc.description, message_id) from None


class _Never:
    """datetime_parse's default, never used: every date-time checked here is a non-empty string."""


_NEVER: Any = _Never()


def _shape_check(payload: Any) -> None:
    """No U+0000 anywhere (jsonb and text refuse it) and no nesting deeper than ``ocpp_j.MAX_NESTING``."""
    stack: list[tuple[Any, str, int]] = [(payload, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth >= ocpp_j.MAX_NESTING:
            _refuse(
                where.rstrip("/") or "payload",
                f"nested deeper than {ocpp_j.MAX_NESTING} levels, more than this CSMS stores",
            )
        if isinstance(node, dict):
            for key, value in node.items():
                if "\x00" in key:
                    _refuse(where or "payload", "a property name contains U+0000, which the store cannot hold")
                if isinstance(value, str):
                    if "\x00" in value:
                        _refuse(f"{where}{key}", "contains U+0000, which the store cannot hold")
                elif isinstance(value, dict | list):
                    stack.append((value, f"{where}{key}/", depth + 1))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, str):
                    if "\x00" in value:
                        _refuse(f"{where}{i}", "contains U+0000, which the store cannot hold")
                elif isinstance(value, dict | list):
                    stack.append((value, f"{where}{i}/", depth + 1))


def _column_check(column: Column, value: Any, low_high: tuple[int, int] | None) -> None:
    if low_high is None:  # text
        limit = cast(CharField, column.model_field).max_length
        if isinstance(value, str) and limit is not None and len(value) > limit:
            _refuse(column.path, f"longer than the {limit} characters this CSMS stores")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return  # not a number: the schema said otherwise already
    if column.number:
        if not math.isfinite(value):
            _refuse(column.path, f"{value!r} is not a finite number")
        value = round(value)
    low, high = low_high
    if not low <= value <= high:
        _refuse(column.path, f"{value} is outside what this CSMS stores ({low}..{high})")


def _refuse(path: str, reason: str) -> None:
    raise OcppError("PropertyConstraintViolation", f"{path}: {reason}")


@functools.cache
def _columns_of(action: str) -> tuple[tuple[Column, tuple[str, ...], tuple[int, int] | None], ...]:
    """The action's columns, each with its path split and its integer range (None: a text column)."""
    found = []
    for column in COLUMNS:
        if column.action == action:
            internal = column.model_field.get_internal_type()
            found.append((column, tuple(column.path.split(".")), INTEGER_RANGES.get(internal)))
    return tuple(found)


def values_at(node: Any, parts: tuple[str, ...] | list[str]) -> Iterator[Any]:
    """Every value at ``parts`` ("name", or "name[]" for each item of a list) that the payload has."""
    if not parts:
        yield node
        return
    head, rest = parts[0], parts[1:]
    if not isinstance(node, dict):
        return
    if head.endswith("[]"):
        items = node.get(head[:-2])
        if isinstance(items, list):
            for item in items:
                yield from values_at(item, rest)
    elif head in node:
        yield from values_at(node[head], rest)


# --- The schemas the `ocpp` package ships, read as a map from JSON path to the schema of the value there ----------


@functools.cache
def schema_paths(version: str, action: str) -> dict[str, dict[str, Any]]:
    """Every path of ``action``'s request schema ("a.b[].c") -> the schema of the value there, $refs resolved."""
    folder = os.path.join(os.path.dirname(ocpp.messages.__file__), f"v{version.replace('.', '')}", "schemas")
    path = os.path.join(folder, f"{action}Request.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8-sig") as fh:
        root = json.load(fh)
    paths: dict[str, dict[str, Any]] = {}

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    def walk(node: dict[str, Any], prefix: str, depth: int) -> None:
        node = resolve(node)
        if depth > 20:  # the OCPP schemas are not recursive; a guard in case a later one is
            return
        if node.get("type") == "array":
            walk(node.get("items", {}), prefix + "[]", depth + 1)
            return
        if prefix:
            paths[prefix] = node
        for name, child in node.get("properties", {}).items():
            walk(child, f"{prefix}.{name}" if prefix else name, depth + 1)

    walk(root, "", 0)
    return paths


@functools.cache
def _date_time_paths(version: str, action: str) -> tuple[tuple[str, ...], ...]:
    found = []
    for path, leaf in schema_paths(version, action).items():
        if leaf.get("format") == "date-time":
            found.append(tuple(_split(path)))
    return tuple(found)


def _split(path: str) -> list[str]:
    """ "a.b[].c" -> ["a", "b[]", "c"]; a list of lists ("a[][]") is not in any OCPP request."""
    return path.split(".")
