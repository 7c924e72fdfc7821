"""The proof that nothing acknowledged was lost or doubled: an edge agent's ledger compared with what is stored.

``edge-agent simulate --ledger FILE`` writes one JSON line per station-initiated CALL the CSMS answered with a
CALLRESULT: ``station``, ``action``, ``message_id``, ``seq_no``, ``meter_timestamp`` and ``payload_sha256`` (the
SHA-256 of the payload's canonical JSON, ``chargers.ocpp_j.payload_digest``). A CALLRESULT is our promise that the
message is durable, so for every line:

- **missing**: no stored incoming CALL has that station, message id and payload digest, or the data it carried is
  not there (a TransactionEvent without its (transaction, seqNo) row, a MeterValues without its sampled values);
- **doubled**: the message was stored more than once, or one sampled value of it is stored twice.

Lines repeating the same (station, message id, digest) are one message acknowledged twice (a retransmit answered
from the log after the first answer was lost): counted once. A torn last line (an agent killed mid-write) is
skipped and reported.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count

from chargers import ocpp_j
from chargers.models import Direction, MessageLog, MeterValue, Station, TransactionEvent

EXAMPLES = 10  # problems listed by name; the counts cover them all


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    station: str
    action: str
    message_id: str
    payload_sha256: str
    seq_no: int | None = None
    meter_timestamp: str | None = None


@dataclass
class LedgerReport:
    acknowledged: int = 0
    stored: int = 0
    missing: int = 0
    doubled: int = 0
    torn_lines: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.doubled == 0

    def summary(self) -> str:
        return f"{self.acknowledged} acknowledged, {self.stored} stored, {self.missing} missing, {self.doubled} doubled"

    def problem(self, text: str) -> None:
        if len(self.problems) < EXAMPLES:
            self.problems.append(text)


def ledger_read(lines: Iterable[str]) -> tuple[list[LedgerEntry], int]:
    """The entries of a ledger file's lines, and how many lines were unreadable (torn by a kill mid-write)."""
    entries: list[LedgerEntry] = []
    torn = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            entries.append(
                LedgerEntry(
                    station=str(row["station"]),
                    action=str(row["action"]),
                    message_id=str(row["message_id"]),
                    payload_sha256=str(row["payload_sha256"]),
                    seq_no=row.get("seq_no"),
                    meter_timestamp=row.get("meter_timestamp"),
                )
            )
        except (ValueError, KeyError, TypeError):
            torn += 1
    return entries, torn


def ledger_compare(*, entries: Iterable[LedgerEntry]) -> LedgerReport:
    """Compare acknowledged messages with the message log, the transaction events and the meter values."""
    report = LedgerReport()
    unique = {(e.station, e.message_id, e.payload_sha256): e for e in entries}
    report.acknowledged = len(unique)
    by_station: dict[str, list[LedgerEntry]] = {}
    for entry in unique.values():
        by_station.setdefault(entry.station, []).append(entry)
    stations = dict(Station.objects.filter(station_id__in=by_station).values_list("station_id", "pk"))
    for station_id, station_entries in by_station.items():
        pk = stations.get(station_id)
        if pk is None:
            report.missing += len(station_entries)
            report.problem(f"{station_id}: unknown station, {len(station_entries)} messages")
            continue
        _station_compare(report, station_id, pk, station_entries)
    return report


def _station_compare(report: LedgerReport, station_id: str, pk: int, entries: list[LedgerEntry]) -> None:
    stored = _stored_calls(pk, {e.message_id for e in entries})
    # Each stored event's own digest: an acknowledged event whose seqNo was already taken by another event's
    # content is not stored, whatever the message log says.
    tx_events = {
        (tx_id, seq_no): ocpp_j.payload_digest(payload)
        for tx_id, seq_no, payload in TransactionEvent.objects.filter(transaction__station_id=pk)
        .values_list("transaction__transaction_id", "seq_no", "payload")
        .iterator(chunk_size=2000)
    }
    # Sampled values the acknowledged MeterValues carried, per (evse, instant), against those stored: two messages
    # about the same instant are counted together, so one of them missing is not hidden by the other.
    expected: Counter[tuple[int, datetime]] = Counter()
    for entry in entries:
        payloads = stored.get((entry.message_id, entry.payload_sha256), [])
        if not payloads:
            report.missing += 1
            report.problem(f"{station_id} {entry.action} {entry.message_id}: acknowledged, not in the message log")
            continue
        report.stored += 1
        if len(payloads) > 1:
            report.doubled += len(payloads) - 1
            report.problem(f"{station_id} {entry.action} {entry.message_id}: stored {len(payloads)} times")
        if entry.action == "MeterValues":
            expected.update(_sampled_counts(payloads[0]))
        elif entry.action == "TransactionEvent" and not _event_stored(entry, payloads[0], tx_events):
            report.missing += 1
            report.problem(f"{station_id} TransactionEvent {entry.message_id}: logged, but the event is not stored")
    meter_rows = _meter_rows(pk)
    short = [key for key, count in expected.items() if meter_rows[key] < count]
    report.missing += len(short)
    for evse_id, at in short[:EXAMPLES]:
        report.problem(f"{station_id} meter values of EVSE {evse_id} at {at.isoformat()}: fewer stored than sent")
    for key, count in _meter_duplicates(pk):
        report.doubled += count - 1
        report.problem(f"{station_id} meter value {key} stored {count} times")


def _stored_calls(pk: int, message_ids: set[str]) -> dict[tuple[str, str], list[Any]]:
    """Stored incoming CALLs answered with a CALLRESULT, by (message id, payload digest)."""
    rows = MessageLog.objects.filter(
        station_id=pk, direction=Direction.IN, message_type=ocpp_j.CALL, error_code="", message_id__in=message_ids
    ).values_list("message_id", "payload_sha256", "payload")
    stored: dict[tuple[str, str], list[Any]] = {}
    for message_id, digest, payload in rows.iterator(chunk_size=2000):
        # The digest of the payload as received (rows from before the column existed: computed from the payload).
        stored.setdefault((message_id, digest or ocpp_j.payload_digest(payload)), []).append(payload)
    return stored


MeterKey = tuple[int, datetime, str, str, str, str]  # evse, timestamp, measurand, phase, location, context


def _meter_rows(pk: int) -> Counter[tuple[int, datetime]]:
    """How many MeterValues-carried sampled values are stored per (evse, timestamp)."""
    rows = MeterValue.objects.filter(station_id=pk, source="MeterValues").values_list("evse_id", "timestamp")
    return Counter(rows.iterator(chunk_size=5000))


def _event_stored(entry: LedgerEntry, payload: Any, tx_events: dict[tuple[str, int], str]) -> bool:
    key = (payload["transactionInfo"]["transactionId"], payload["seqNo"])
    return tx_events.get(key) == entry.payload_sha256


def _sampled_counts(payload: Any) -> Counter[tuple[int, datetime]]:
    counts: Counter[tuple[int, datetime]] = Counter()
    for mv in payload["meterValue"]:
        counts[(payload["evseId"], _instant(mv["timestamp"]))] += len(mv["sampledValue"])
    return counts


def _instant(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _meter_duplicates(pk: int) -> list[tuple[MeterKey, int]]:
    """Sampled values stored more than once: the same measurement (evse, time, measurand, phase, location, context)
    with the same value, from the same kind of message (a copy, not a second reading)."""
    groups = (
        MeterValue.objects.filter(station_id=pk)
        .values("evse_id", "timestamp", "measurand", "phase", "location", "context", "source", "value")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    return [
        ((g["evse_id"], g["timestamp"], g["measurand"], g["phase"], g["location"], g["context"]), g["n"])
        for g in groups
    ]
