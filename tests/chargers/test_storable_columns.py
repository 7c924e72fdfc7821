"""Every column filled from an OCPP message holds whatever the OCPP 2.0.1 and 2.1 schemas allow there.

Generated from the JSON schemas the `ocpp` package ships: for each column of ``chargers.handlers.storable.COLUMNS``
the schema of its JSON path in each version is read, and the column must be at least as wide as the schema's
maxLength or its longest enum value. Every text or integer column of the models the handlers write must be in the
table or named below as not coming from a payload, so a new column cannot escape the check.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db.models import CharField, IntegerField, TextField

from chargers.handlers.storable import COLUMNS, INTEGER_RANGES, schema_paths
from chargers.models import ChargingProfile, MeterValue

VERSIONS = ("2.0.1", "2.1")

# Models whose rows the handlers write from station payloads, and their columns that no payload fills.
WRITTEN = ("Station", "DeviceVariable", "Evse", "Connector", "Transaction", "TransactionEvent", "MeterValue",
           "EvChargingNeeds", "ChargingProfile", "DerAlarm", "DerControl")  # fmt: skip
NOT_FROM_PAYLOAD = {
    "Station": {
        "station_id",
        "password_hash",
        "password_pending_hash",
        "boot_status",
        "heartbeat_interval",
        "ocpp_version",
        "channel_name",
        "security_profile",
    },
    "MeterValue": {"value", "source"},  # value: meter_values.sampled_value_int (checked per sampledValue)
    "Transaction": {"energy_wh"},  # the sampled Energy.Active.Import.Register, as MeterValue.value
    "ChargingProfile": {"source", "status"},
    "DerControl": {"source", "status"},
}


def _leaves(column):
    """(version, schema of the value at the column's path) for each version whose schema has the path."""
    return [
        (v, schema_paths(v, column.action)[column.path])
        for v in VERSIONS
        if column.path in schema_paths(v, column.action)
    ]


def _widest(leaf: dict) -> int | None:
    """The longest string the schema allows there (None: unbounded)."""
    if "enum" in leaf:
        return max(len(str(value)) for value in leaf["enum"])
    return leaf.get("maxLength")


@pytest.mark.parametrize("column", COLUMNS, ids=lambda c: f"{c.field}<-{c.action}.{c.path}")
def test_each_mapped_column_is_at_least_as_wide_as_the_schema_allows(column):
    # Given the schema of the column's JSON path in every version that has it
    leaves = _leaves(column)
    assert leaves, f"{column.action} has no {column.path} in any version: the table is wrong"
    field = column.model_field
    for version, leaf in leaves:
        kind = leaf.get("type")
        if isinstance(field, CharField) and not isinstance(field, TextField):
            # Then a text column holds the longest value the schema allows
            assert kind == "string", (version, leaf)
            widest = _widest(leaf)
            assert widest is not None, f"{version} {column.path} is unbounded: {column.field} must be a TextField"
            assert field.max_length is not None
            assert field.max_length >= widest, f"{version} {column.path}: {widest} > {column.field} {field.max_length}"
        elif isinstance(field, TextField):
            assert kind == "string", (version, leaf)
        else:
            # And an integer column is filled from a JSON integer, or from a number it rounds (checked at the door)
            assert isinstance(field, IntegerField), column.field
            assert kind == ("number" if column.number else "integer") or (kind == "integer" and column.number), (
                version,
                column.path,
                kind,
            )
            assert field.get_internal_type() in INTEGER_RANGES


@pytest.mark.parametrize("model_name", WRITTEN)
def test_every_text_and_integer_column_the_handlers_write_is_in_the_table(model_name):
    model = apps.get_model("chargers", model_name)
    mapped = {c.field.split(".")[1] for c in COLUMNS if c.field.startswith(f"{model_name}.")}
    for field in model._meta.concrete_fields:
        if field.primary_key or field.is_relation or not isinstance(field, CharField | TextField | IntegerField):
            continue
        assert field.name in mapped | NOT_FROM_PAYLOAD.get(model_name, set()), (
            f"{model_name}.{field.name}: map it in chargers.handlers.storable.COLUMNS or list it as not from a payload"
        )


def test_the_schemas_longest_known_values_need_the_columns_widened_in_chargers_0003():
    # The values that made real stations' messages fail: 2.0.1's longest profile purpose (34 characters) and a
    # custom 20-character unit of measure.
    purpose = schema_paths("2.0.1", "ReportChargingProfiles")["chargingProfile[].chargingProfilePurpose"]
    assert "ChargingStationExternalConstraints" in purpose["enum"]
    assert (ChargingProfile._meta.get_field("purpose").max_length or 0) >= 34
    assert (MeterValue._meta.get_field("unit").max_length or 0) >= 20
