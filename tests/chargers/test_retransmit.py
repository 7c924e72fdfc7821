"""Message-id dedup: a retransmit is the same id with the same payload within OCPP_RETRANSMIT_WINDOW; else it is new.

OCPP-J asks message ids to be unique per connection only: a charger that restarts its counter after a reboot sends
old ids with new data, which must be stored, not answered from the old log.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chargers.apply import batch_apply
from chargers.jobs import CallOutcome, IncomingCall, StationRef
from chargers.models import BootStatus, MessageLog, MeterValue, Station
from tests.chargers.factories import StationFactory
from tests.chargers.payloads import COMMON

pytestmark = pytest.mark.django_db

WINDOW = 3600


@pytest.fixture(autouse=True)
def _window(settings):
    settings.OCPP_RETRANSMIT_WINDOW = WINDOW


def _ref() -> StationRef:
    station = StationFactory.create()
    return StationRef(pk=station.pk, station_id=station.station_id, version="2.1")


def _meter_values(value: float) -> dict[str, Any]:
    payload = copy.deepcopy(COMMON["MeterValues"])
    payload["meterValue"][0]["sampledValue"] = [{"value": value, "measurand": "Power.Active.Import"}]
    return payload


def _send(ref: StationRef, message_id: str, payload: dict[str, Any], at: datetime, action="MeterValues"):
    (outcome,) = batch_apply([IncomingCall(ref, message_id, action, payload, at)])
    return outcome


def _contract_digest(payload: dict[str, Any]) -> str:
    """The digest as the edge agent's ledger computes it (the contract, written out independently here)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_same_id_and_payload_within_the_window_is_answered_from_the_log_and_stored_once():
    # Given a station's MeterValues stored a minute ago
    ref, now = _ref(), datetime.now(UTC)
    payload = _meter_values(7400)
    first = _send(ref, "1", payload, now - timedelta(minutes=1))
    # When it sends the very same message again (it missed the answer)
    again = _send(ref, "1", copy.deepcopy(payload), now)
    # Then it is answered from the log, and nothing is stored twice
    assert first == CallOutcome(payload={})
    assert again == CallOutcome(payload={}, retransmit=True)
    assert MeterValue.objects.filter(station_id=ref.pk).count() == 1
    assert MessageLog.objects.filter(station_id=ref.pk, message_id="1").count() == 1
    # And the log row carries the payload's digest as the ledger computes it
    assert MessageLog.objects.get(station_id=ref.pk).payload_sha256 == _contract_digest(payload)


def test_the_same_id_with_another_payload_is_a_new_message_stored_and_answered_fresh():
    # Given a station that rebooted and restarted its message ids
    ref, now = _ref(), datetime.now(UTC)
    _send(ref, "1", _meter_values(7400), now - timedelta(minutes=1))
    # When its id "1" now carries another reading
    outcome = _send(ref, "1", _meter_values(3600), now)
    # Then the reading is stored and answered as new
    assert outcome == CallOutcome(payload={})
    assert sorted(MeterValue.objects.filter(station_id=ref.pk).values_list("value", flat=True)) == [3600, 7400]
    assert MessageLog.objects.filter(station_id=ref.pk, message_id="1").count() == 2


def test_the_same_id_and_payload_after_the_window_is_a_new_message():
    # Given a message stored longer ago than the window
    ref, now = _ref(), datetime.now(UTC)
    payload = _meter_values(7400)
    _send(ref, "1", payload, now - timedelta(seconds=WINDOW + 60))
    # When the same id and payload arrive now
    outcome = _send(ref, "1", copy.deepcopy(payload), now)
    # Then it is a new message
    assert outcome.retransmit is False
    assert MeterValue.objects.filter(station_id=ref.pk).count() == 2


def test_the_same_id_and_payload_in_one_batch_is_stored_once():
    ref, now = _ref(), datetime.now(UTC)
    payload = _meter_values(7400)
    outcomes = batch_apply([IncomingCall(ref, "1", "MeterValues", copy.deepcopy(payload), now) for _ in range(2)])
    assert [o.retransmit for o in outcomes] == [False, True]
    assert MeterValue.objects.filter(station_id=ref.pk).count() == 1


def test_a_boot_is_answered_with_the_present_status_even_when_its_id_and_payload_repeat():
    # Given a Pending station that booted, then was accepted by an operator
    ref, now = _ref(), datetime.now(UTC)
    Station.objects.filter(pk=ref.pk).update(boot_status=BootStatus.PENDING)
    boot = COMMON["BootNotification"]
    assert _send(ref, "1", boot, now - timedelta(minutes=1), "BootNotification").payload["status"] == "Pending"
    Station.objects.filter(pk=ref.pk).update(boot_status=BootStatus.ACCEPTED)
    # When it boots again with a restarted counter and the same payload
    outcome = _send(ref, "1", copy.deepcopy(boot), now, "BootNotification")
    # Then it is Accepted: a boot's answer is never replayed from the log
    assert (outcome.payload["status"], outcome.retransmit) == ("Accepted", False)
