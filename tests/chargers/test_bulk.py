"""The writer's bulk insert (COPY on PostgreSQL, bulk_create elsewhere) stores every field exactly as given."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, transaction

from chargers.bulk import bulk_insert
from chargers.models import Evse, MessageLog, MeterValue, StationEvent
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db

AT = datetime(2026, 1, 15, 10, 0, 0, 123000, tzinfo=UTC)


def test_rows_come_back_field_for_field():
    # Given rows of the three kinds the writer inserts, with awkward values (negative, unicode, tabs, JSON nulls)
    station = StationFactory.create()
    meters = [
        MeterValue(station=station, evse_id=1, timestamp=AT, received_at=AT, measurand="Power.Active.Import",
                   phase="L1", location="EV", context="Sample.Periodic", value=-11_000 + i, unit="W",
                   source="MeterValues")
        for i in range(3)
    ]  # fmt: skip
    payload = {"evseId": 1, "note": "tab\there, newline\n, back\\slash, \u00e9\u20ac\U0001f600", "none": None}
    log = MessageLog(station=station, direction="in", message_type=2, message_id="m-1", action="MeterValues",
                     ocpp_version="2.0.1", payload=payload, response={}, created_at=AT, responded_at=None)  # fmt: skip
    event = StationEvent(station=station, kind="Booted", timestamp=AT, received_at=AT, summary="PowerUp",
                         data={"modem": {}, "list": [1, 2.5, "x"]})  # fmt: skip
    # When they are bulk-inserted in one transaction
    with transaction.atomic():
        bulk_insert(MeterValue, meters)
        bulk_insert(MessageLog, [log])
        bulk_insert(StationEvent, [event])
        bulk_insert(StationEvent, [])
    # Then every field reads back as given
    stored = list(MeterValue.objects.filter(station=station).order_by("value").values())
    assert [m["value"] for m in stored] == [-11_000, -10_999, -10_998]
    assert {(m["phase"], m["location"], m["context"], m["unit"], m["timestamp"]) for m in stored} == {
        ("L1", "EV", "Sample.Periodic", "W", AT)
    }
    row = MessageLog.objects.get(station=station, message_id="m-1")
    assert (row.payload, row.response, row.created_at, row.responded_at) == (payload, {}, AT, None)
    assert StationEvent.objects.get(station=station).data == {"modem": {}, "list": [1, 2.5, "x"]}


def test_a_row_breaking_a_unique_constraint_is_refused_as_an_integrity_error():
    # Given an EVSE already stored (unique per station and evse id)
    station = StationFactory.create()
    bulk_insert(Evse, [Evse(station=station, evse_id=1)])
    # When the same (station, evse id) is inserted again / Then Django's IntegrityError is raised
    with pytest.raises(IntegrityError), transaction.atomic():
        bulk_insert(Evse, [Evse(station=station, evse_id=1)])
    assert Evse.objects.filter(station=station).count() == 1
