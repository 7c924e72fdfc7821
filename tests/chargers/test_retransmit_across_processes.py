"""A station's retransmit reaching another server process while the first copy is still in this process's
uncommitted batch (it reconnected there): stored once, the second answered from the log."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime

import pytest
from django.db import connection, transaction

from chargers.apply import batch_apply
from chargers.jobs import IncomingCall, StationRef
from chargers.models import MessageLog, MeterValue
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db(transaction=True)

PAYLOAD = {
    "evseId": 1,
    "meterValue": [
        {"timestamp": "2026-05-01T00:00:00Z", "sampledValue": [{"value": 7400, "measurand": "Power.Active.Import"}]}
    ],
}


def test_a_retransmit_to_another_process_while_the_first_copy_commits_is_stored_once():
    if connection.vendor != "postgresql":
        pytest.skip("two writers at once: PostgreSQL (SQLite has one writer at a time)")
    # Given a station whose MeterValues sits in one process's batch, applied but not yet committed
    row = StationFactory.create()
    ref = StationRef(pk=row.pk, station_id=row.station_id, version="2.0.1")
    applied, outcomes = threading.Event(), {}

    def first_process() -> None:
        with transaction.atomic():
            outcomes["first"] = batch_apply([IncomingCall(ref, "m1", "MeterValues", copy.deepcopy(PAYLOAD), _now())])
            applied.set()
            threading.Event().wait(1.0)  # a slow COMMIT
        connection.close()

    def second_process() -> None:  # its own connection, as another server process has
        applied.wait()
        outcomes["second"] = batch_apply([IncomingCall(ref, "m1", "MeterValues", copy.deepcopy(PAYLOAD), _now())])
        connection.close()

    # When the station's retransmit is applied by another process meanwhile
    threads = [threading.Thread(target=first_process), threading.Thread(target=second_process)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then it is answered from the log and nothing is stored twice
    assert outcomes["second"][0].retransmit is True
    assert MessageLog.objects.filter(station_id=row.pk, message_id="m1").count() == 1
    assert MeterValue.objects.filter(station_id=row.pk).count() == 1


def _now() -> datetime:
    return datetime.now(UTC)
