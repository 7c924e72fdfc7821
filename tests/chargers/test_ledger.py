"""``station ledger-check``: an agent's ledger of acknowledged messages against what the CSMS stored.

The ledger lines are written here the way the edge agent writes them (the digest computed with hashlib from the
payload's canonical JSON, not with the CSMS's own helper), and the messages stored through the real write path.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chargers.apply import batch_apply
from chargers.jobs import IncomingCall, StationRef
from chargers.ledger import ledger_compare, ledger_read
from chargers.models import MeterValue
from tests.chargers.factories import StationFactory
from tests.chargers.test_transactions import tx_event

pytestmark = pytest.mark.django_db(transaction=True)

AT = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def meter_values(second: int, watts: float) -> dict[str, Any]:
    return {
        "evseId": 1,
        "meterValue": [
            {
                "timestamp": f"2026-01-15T10:00:{second:02d}Z",
                "sampledValue": [
                    {"value": watts, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
                    {"value": 50.0, "measurand": "SoC"},
                ],
            }
        ],
    }


def line(station: str, action: str, message_id: str, payload: dict[str, Any]) -> str:
    return json.dumps(
        {
            "station": station,
            "action": action,
            "message_id": message_id,
            "seq_no": payload.get("seqNo"),
            "meter_timestamp": None,
            "payload_sha256": digest(payload),
            "acked_at": "2026-01-15T10:00:00Z",
        }
    )


def stored(ref: StationRef, messages: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Store the messages through the writer's batch function; returns their ledger lines."""
    outcomes = batch_apply([IncomingCall(ref, mid, action, payload, AT) for mid, action, payload in messages])
    assert [o.error_code for o in outcomes] == [""] * len(messages)
    return [line(ref.station_id, action, mid, payload) for mid, action, payload in messages]


@pytest.fixture
def ref() -> StationRef:
    station = StationFactory.create()
    return StationRef(pk=station.pk, station_id=station.station_id, version="2.1")


@pytest.fixture
def messages() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("m-1", "MeterValues", meter_values(1, 7400.0)),
        ("m-2", "TransactionEvent", tx_event(0, "Started", minute=0, wh=1000)),
        ("m-3", "MeterValues", meter_values(2, -3200.5)),
        ("m-4", "TransactionEvent", tx_event(1, "Updated", minute=1, wh=1100)),
    ]


def test_it_finds_every_acknowledged_message_stored_once(ref, messages):
    # Given four messages stored and acknowledged
    lines = stored(ref, messages)
    # When the ledger is compared with the database
    report = ledger_compare(entries=ledger_read(lines)[0])
    # Then all are there, once
    assert report.summary() == "4 acknowledged, 4 stored, 0 missing, 0 doubled"
    assert report.ok


def test_it_counts_an_acknowledged_message_that_was_not_stored_as_missing(ref, messages):
    # Given the ledger also holds a message the CSMS never stored
    lines = [*stored(ref, messages), line(ref.station_id, "MeterValues", "m-9", meter_values(9, 1.0))]
    # When compared / Then it is missing, and named
    report = ledger_compare(entries=ledger_read(lines)[0])
    assert (report.acknowledged, report.stored, report.missing, report.doubled) == (5, 4, 1, 0)
    assert "m-9" in report.problems[0]


def test_a_reused_message_id_with_another_payload_is_not_taken_for_the_acknowledged_one(ref, messages):
    # Given the station acknowledged m-1 with one payload, but what is stored under m-1 is another payload
    lines = stored(ref, messages)
    lines[0] = line(ref.station_id, "MeterValues", "m-1", meter_values(1, 11.0))
    # When compared / Then the acknowledged payload is missing
    report = ledger_compare(entries=ledger_read(lines)[0])
    assert report.missing == 1


def test_it_counts_a_sampled_value_stored_twice_as_doubled(ref, messages):
    # Given everything stored, and then one sampled value written a second time
    lines = stored(ref, messages)
    row = MeterValue.objects.filter(station_id=ref.pk, source="MeterValues").earliest("id")
    row.pk = None
    row.save()
    # When compared / Then the copy is reported
    report = ledger_compare(entries=ledger_read(lines)[0])
    assert (report.missing, report.doubled) == (0, 1)


def test_a_logged_message_whose_data_is_gone_is_missing(ref, messages):
    # Given the message log has the MeterValues, but its sampled values are not stored
    lines = stored(ref, messages)
    MeterValue.objects.filter(station_id=ref.pk, timestamp=datetime(2026, 1, 15, 10, 0, 2, tzinfo=UTC)).delete()
    # When compared / Then it counts as missing
    assert ledger_compare(entries=ledger_read(lines)[0]).missing == 1


def test_a_message_acknowledged_twice_counts_once_and_a_torn_line_is_skipped(ref, messages):
    # Given a retransmit acknowledged again from the log, and a last line cut by a kill mid-write
    lines = stored(ref, messages)
    lines = [*lines, lines[0], lines[1][:40]]
    # When read and compared
    entries, torn = ledger_read(lines)
    report = ledger_compare(entries=entries)
    # Then the repeat is one message and the torn line is reported, not counted
    assert torn == 1
    assert report.summary() == "4 acknowledged, 4 stored, 0 missing, 0 doubled"


def test_the_command_prints_the_counts_and_fails_unless_nothing_is_missing_or_doubled(ref, messages, tmp_path: Path):
    # Given a ledger file with one message that is not stored
    ledger = tmp_path / "ledger.jsonl"
    lines = [*stored(ref, messages), line(ref.station_id, "Heartbeat", "h-1", {})]
    ledger.write_text("\n".join(lines) + "\n")
    # When checked / Then it exits with an error that carries the counts
    with pytest.raises(CommandError, match="5 acknowledged, 4 stored, 1 missing, 0 doubled"):
        call_command("station", "ledger-check", str(ledger))
    # And with only stored messages it passes and prints them
    ledger.write_text("\n".join(lines[:-1]) + "\n")
    out = _run(ledger)
    assert "4 acknowledged, 4 stored, 0 missing, 0 doubled" in out


def _run(ledger: Path) -> str:
    import io

    buffer = io.StringIO()
    call_command("station", "ledger-check", str(ledger), stdout=buffer)
    return buffer.getvalue()


def test_an_acknowledged_event_whose_seq_no_holds_another_events_content_is_missing(ref, messages):
    # Given everything stored, then a different event acknowledged under an seqNo already taken (its content is
    # not stored: events are unique per transaction and seqNo)
    lines = stored(ref, messages)
    lines += stored(ref, [("m-5", "TransactionEvent", tx_event(1, "Updated", minute=9, wh=9999))])
    # When compared / Then the second one's content is missing
    report = ledger_compare(entries=ledger_read(lines)[0])
    assert (report.acknowledged, report.missing, report.doubled) == (5, 1, 0)


def test_two_messages_about_the_same_instant_are_counted_together(ref, messages):
    # Given two MeterValues about the same instant, both acknowledged, and one's sampled values then lost
    lines = stored(ref, messages)
    same_instant = meter_values(1, 500.0)
    same_instant["meterValue"][0]["sampledValue"] = same_instant["meterValue"][0]["sampledValue"][:1]  # power only
    lines += stored(ref, [("m-6", "MeterValues", same_instant)])
    MeterValue.objects.filter(station_id=ref.pk, value=500).delete()
    # When compared / Then the loss is not hidden by the other message's rows at that instant
    report = ledger_compare(entries=ledger_read(lines)[0])
    assert (report.missing, report.doubled) == (1, 0)
