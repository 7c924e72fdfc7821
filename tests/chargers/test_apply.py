"""The writer's batch: many stations' TransactionEvents applied together, as a regulating fleet sends them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chargers.apply import batch_apply
from chargers.jobs import IncomingCall, StationRef
from chargers.models import MeterValue, Transaction, TransactionEvent
from tests.chargers.factories import StationFactory
from tests.chargers.test_transactions import tx_event

pytestmark = pytest.mark.django_db(transaction=True)

AT = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def calls(ref: StationRef, events: list[dict[str, Any]], prefix: str) -> list[IncomingCall]:
    return [IncomingCall(ref, f"{prefix}-{n}", "TransactionEvent", event, AT) for n, event in enumerate(events)]


def refs(count: int) -> list[StationRef]:
    stations = StationFactory.create_batch(count)
    return [StationRef(pk=s.pk, station_id=s.station_id, version="2.0.1") for s in stations]


def test_one_batch_stores_each_seq_no_once_and_keeps_the_newest_state_per_transaction():
    # Given two stations, one with a transaction already started in an earlier batch
    a, b = refs(2)
    batch_apply(calls(a, [tx_event(0, "Started", minute=0, wh=1000)], "a0"))
    # When one batch carries, for both stations: new events, a repeat of a stored seqNo under a new message id,
    # a repeat of an event of this same batch, and an older event after a newer one
    jobs = calls(
        a,
        [
            tx_event(0, "Started", minute=0, wh=1000),
            tx_event(2, "Updated", minute=2, state="SuspendedEV", wh=2000),
            tx_event(1, "Updated", minute=1, wh=1500),
            tx_event(2, "Updated", minute=2, state="SuspendedEV", wh=2000),
        ],
        "a1",
    ) + calls(b, [tx_event(0, "Started", minute=0, wh=10), tx_event(1, "Ended", minute=5, state="Idle", wh=90)], "b1")
    outcomes = batch_apply(jobs)
    # Then every event is answered
    assert [o.error_code for o in outcomes] == [""] * len(jobs)
    # And every (transaction, seqNo) is stored exactly once
    stored = sorted(TransactionEvent.objects.values_list("transaction__station_id", "seq_no"))
    assert stored == [(a.pk, 0), (a.pk, 1), (a.pk, 2), (b.pk, 0), (b.pk, 1)]
    # And each transaction's state is that of its highest seqNo, not of the event that came last
    tx_a = Transaction.objects.get(station_id=a.pk)
    assert (tx_a.last_seq_no, tx_a.charging_state, tx_a.energy_wh, tx_a.active) == (2, "SuspendedEV", 2000, True)
    tx_b = Transaction.objects.get(station_id=b.pk)
    assert (tx_b.last_seq_no, tx_b.charging_state, tx_b.energy_wh, tx_b.active) == (1, "Idle", 90, False)
    assert tx_b.stopped_reason == "EVDisconnected"
    # And the repeats carried no meter value twice
    assert MeterValue.objects.filter(transaction=tx_a).count() == 3
    assert MeterValue.objects.filter(transaction=tx_b).count() == 2


def test_a_start_reported_late_moves_the_start_back_without_touching_the_newer_state():
    # Given a transaction first seen through an Updated event (its Started was queued offline)
    (a,) = refs(1)
    batch_apply(calls(a, [tx_event(1, "Updated", minute=3, wh=1500)], "u"))
    # When the Started event arrives afterwards
    batch_apply(calls(a, [tx_event(0, "Started", minute=0, offline=True, state="EVConnected", wh=1000)], "s"))
    # Then the start moves back to it, and the state stays that of seqNo 1
    tx = Transaction.objects.get(station_id=a.pk)
    assert tx.started_at == datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    assert (tx.last_seq_no, tx.charging_state, tx.energy_wh) == (1, "Charging", 1500)


def test_an_event_with_an_unreadable_meter_timestamp_is_refused_whole_and_its_correction_is_stored():
    # Given an event whose second meter value has a timestamp that is not ISO 8601
    (a,) = refs(1)
    event = tx_event(0, "Started", minute=0, wh=1000)
    event["meterValue"].append({**event["meterValue"][0], "timestamp": "yesterday"})
    # When it is applied, then the station gets a CALLERROR naming the constraint
    (outcome,) = batch_apply(calls(a, [event], "bad"))
    assert outcome.error_code == "PropertyConstraintViolation"
    # And nothing of the event was stored, so the station's corrected retry is not taken for a repeat
    assert not TransactionEvent.objects.exists()
    assert not MeterValue.objects.exists()
    event["meterValue"].pop()
    (retry,) = batch_apply(calls(a, [event], "fixed"))
    assert retry.error_code == ""
    assert TransactionEvent.objects.count() == 1
    assert MeterValue.objects.count() == 1
