"""One group-commit batch's state: loaded once before the jobs run, collected by the handlers, written before COMMIT.

``BatchContext`` is what every handler in ``chargers.handlers`` gets: the batch's clock, the hot-path rows it
queues as plain tuples (message log, meter values, transaction events), the station events, the telemetry to
release after COMMIT, and the stations, connectors, answers and transactions the batch already knows.
``stations_load``, ``connectors_load``, ``answered_load`` and ``transactions_load`` fill it with one query each per
batch; ``BatchContext.flush`` writes it in bulk. ``chargers.apply.batch_apply`` runs the whole sequence.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db import connection
from django.db.models import Case, Q, Value, When

from chargers import ocpp_j
from chargers.bulk import bulk_insert, insert_rows, update_rows
from chargers.jobs import CallOutcome, IncomingCall, StationRef
from chargers.models import (
    Connector,
    Direction,
    Evse,
    MessageLog,
    MeterValue,
    Station,
    StationEvent,
    Transaction,
    TransactionEvent,
)
from chargers.telemetry import TelemetryUpdate


@dataclass(slots=True)
class StationState:
    """A station row as the batch sees it: loaded under its row lock, changed in memory by the batch's jobs."""

    channel_name: str  # the socket that owns the station ("" if none): connection claims read and move it
    boot_status: str  # what a BootNotification answers
    heartbeat_interval: int


@dataclass(slots=True)
class ConnectorState:
    """A connector's status as the batch sees it (StatusNotification); ``pk`` None: created by this batch."""

    pk: int | None
    status: str
    status_at: datetime | None
    changed: bool = False


class BatchContext:
    """Rows collected while a batch's jobs run, written in bulk before COMMIT."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.logs: list[tuple[Any, ...]] = []  # MESSAGE_LOG_COLUMNS
        self.meter_values: list[tuple[Any, ...]] = []  # METER_VALUE_COLUMNS
        self.events: list[StationEvent] = []
        self.touched: set[int] = set()
        self.telemetry: list[TelemetryUpdate] = []
        self.answered: dict[tuple[int, str, str], CallOutcome] = {}  # (station pk, message id, payload digest)
        self.digests: dict[int, str] = {}  # id(IncomingCall) -> its payload digest, computed once per batch
        # TransactionEvent state for the batch: loaded once (transactions_load), changed in memory, written in flush.
        self.transactions: dict[tuple[int, str], Transaction] = {}
        self.stored_events: set[tuple[int, int]] = set()  # (transaction pk, seqNo) already in the database
        self.tx_events: list[tuple[Any, ...]] = []  # TRANSACTION_EVENT_COLUMNS
        self.tx_changed: dict[int, set[str]] = {}  # transaction pk -> fields to write
        # The batch's station rows (stations_load), and the fields its jobs set on them, newest value per field:
        # a reconnect storm's claims and boots, written in flush with one UPDATE per set of fields.
        self.stations: dict[int, StationState] = {}
        self.station_changes: dict[int, dict[str, Any]] = {}
        # The EVSEs and connectors of the batch's StatusNotifications (connectors_load): (station pk, evse id) -> EVSE
        # pk, and (station pk, evse id, connector id) -> its status, changed in memory, written in flush.
        self.evses: dict[tuple[int, int], int] = {}
        self.connectors: dict[tuple[int, int, int], ConnectorState] = {}
        # The network half of the call being applied (IncomingCall.looked_up), for its handler; None for most calls.
        self.looked_up: Any = None

    def event(self, station: StationRef, kind: str, *, at: datetime | None = None, summary: str = "", **data: Any):
        self.events.append(
            StationEvent(
                station_id=station.pk,
                kind=kind,
                timestamp=at or self.now,
                received_at=self.now,
                summary=summary[:255],
                data=data,
            )
        )

    def station_change(self, pk: int, **values: Any) -> None:
        """Set fields of a station row at flush: a later job's value for a field replaces an earlier one's."""
        self.station_changes.setdefault(pk, {}).update(values)

    def log(
        self,
        station: StationRef,
        direction: str,
        message_type: int,
        *,
        message_id: str = "",
        action: str = "",
        payload: Any = None,
        raw: str = "",
        response: Any = None,
        error_code: str = "",
        error_description: str = "",
        created_at: datetime,
        responded_at: datetime | None = None,
        payload_sha256: str = "",
        checked: bool = False,
    ) -> None:
        """Queue one MessageLog row (a plain tuple: building Django models here cost a tenth of the CSMS's CPU).

        Every incoming CALL gets its payload's digest (``ocpp_j.payload_digest``, the edge agent's ledger matches
        on it). A row not ``checked`` at the door (refused frames, SENDs, our calls and the station's answers) is
        made storable first: one unstorable frame must not roll back the batch that logs it.
        """
        if not payload_sha256 and direction == Direction.IN and message_type == ocpp_j.CALL and payload is not None:
            payload_sha256 = ocpp_j.payload_digest(payload)
        if not checked:
            message_id, action, raw, error_code = (
                _text_safe(message_id)[:64],
                _text_safe(action)[:64],
                _text_safe(raw),
                _text_safe(error_code)[:40],
            )
            error_description = _text_safe(error_description)
            kept = {name: v for name, v in (("payload", payload), ("response", response)) if _jsonb_unsafe(v)}
            if kept:  # jsonb cannot hold U+0000, and deep nesting stays out of native encoders: keep JSON text
                payload = None if "payload" in kept else payload
                response = None if "response" in kept else response
                try:
                    text = json.dumps(kept, ensure_ascii=False)
                except RecursionError:  # deeper than Python's limit: the frame's own text (``raw``) is the record
                    text = ""
                raw = f"{raw}\n{text}" if raw and text else raw or text
        self.logs.append(
            (station.pk, direction, message_type, message_id, action, station.version, payload, raw, response,
             error_code, error_description[:255], created_at, responded_at, payload_sha256)
        )  # fmt: skip

    def flush(self) -> None:
        insert_rows(TransactionEvent, TRANSACTION_EVENT_COLUMNS, self.tx_events)
        _transactions_save(self)
        insert_rows(MeterValue, METER_VALUE_COLUMNS, self.meter_values)
        bulk_insert(StationEvent, self.events)
        insert_rows(MessageLog, MESSAGE_LOG_COLUMNS, self.logs)
        _stations_save(self.station_changes)  # before the touch: it reads the channel the claims leave
        _connectors_save(self)
        if self.touched:
            _stations_touch(self.touched, self.now)


def _text_safe(text: str) -> str:
    """PostgreSQL refuses U+0000 in text: shown as U+FFFD in a record that is not data of record."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _jsonb_unsafe(value: Any) -> bool:
    """U+0000 anywhere in a JSON value (PostgreSQL's jsonb refuses it), or nesting deeper than ``ocpp_j.MAX_NESTING``.

    Iterative: a station may nest a payload as deep as the JSON parser allows (orjson: 1,024 levels), deeper than
    Python's recursion limit, and the frame must still be logged and answered. Deep values are kept as text, never
    handed to the native JSON encoder: orjson up to 3.11.9 overflowed its output buffer on some deeply nested lists
    of dicts (heap corruption that killed the server in the fuzz test).
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict | list):
            if depth >= ocpp_j.MAX_NESTING:
                return True
            if isinstance(item, dict):
                if any("\x00" in key for key in item):
                    return True
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return False


def _stations_touch(pks: set[int], now: datetime) -> None:
    """A message proves the station is alive; a station whose socket is already gone stays offline.

    Once per batch. On PostgreSQL as one prepared-shape statement with an array parameter: the ORM's compile and
    per-id parameter binding cost a millisecond of CPU per batch.
    """
    if connection.vendor != "postgresql":
        Station.objects.filter(pk__in=pks).update(
            last_seen=now, online=Case(When(channel_name="", then=Value(False)), default=Value(True))
        )
        return
    with connection.cursor() as cursor:
        cursor.execute(_TOUCH_SQL, [now, list(pks)])


# Only the model's table name is interpolated (no input): S608 does not apply.
_TOUCH_SQL = f"UPDATE {Station._meta.db_table} SET last_seen = %s, online = (channel_name <> '') WHERE id = ANY(%s)"  # noqa: S608


MESSAGE_LOG_COLUMNS = (
    "station_id", "direction", "message_type", "message_id", "action", "ocpp_version", "payload", "raw", "response",
    "error_code", "error_description", "created_at", "responded_at", "payload_sha256",
)  # fmt: skip
TRANSACTION_EVENT_COLUMNS = (
    "transaction_id", "seq_no", "event_type", "trigger_reason", "timestamp", "received_at", "offline",
    "charging_state", "payload",
)  # fmt: skip
METER_VALUE_COLUMNS = (
    "station_id", "evse_id", "transaction_id", "timestamp", "received_at", "measurand", "phase", "location",
    "context", "value", "unit", "source",
)  # fmt: skip


# Actions answered with the present state are never answered from the log: handling them again stores nothing twice
# (a boot updates the station row, a heartbeat and an authorisation store nothing), while an old answer would be
# wrong (the registration status an operator changed since, yesterday's time, a token's former status).
ANSWERED_FRESH = frozenset({"BootNotification", "Heartbeat", "Authorize"})


def call_digest(ctx: BatchContext, call: IncomingCall) -> str:
    """The call's ``payload_sha256``: as the consumer computed it, else computed once per batch."""
    if call.payload_sha256:
        return call.payload_sha256
    digest = ctx.digests.get(id(call))
    if digest is None:
        digest = ctx.digests[id(call)] = ocpp_j.payload_digest(call.payload)
    return digest


def stations_load(ctx: BatchContext, pks: set[int]) -> None:
    """Lock the batch's stations' rows until COMMIT, in id order, and read what its jobs need of them: one query.

    The batch's stations are those of its CALLs and of its connection claims (``Connected``/``Disconnected``).
    Batches are sequential within one server process only. A station that reconnects to another process and
    retransmits there while its first copy sits in this process's uncommitted batch would find nothing stored and be
    stored twice; with its station row locked, the other process's batch waits for this COMMIT (up to the lock
    timeout, then InternalError and a retransmit) and then answers from the log. Likewise a claim: the channel read
    here is the owner when the batch commits, whichever process claimed the station last, so the claims applied in
    memory (``chargers.apply.station_connected``) return the socket they really replace, and a release applies only
    if this process's socket still owns the station. SQLite has one writer at a time: a plain read.
    """
    if not pks:
        return
    rows: Iterable[tuple[int, str, str, int]]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOAD_STATIONS_SQL, [sorted(pks)])
            rows = cursor.fetchall()
    else:
        rows = Station.objects.filter(pk__in=pks).values_list("pk", "channel_name", "boot_status", "heartbeat_interval")
    ctx.stations = {pk: StationState(channel, boot, interval) for pk, channel, boot, interval in rows}


# Only the model's table name is interpolated (no input): S608 does not apply.
_LOAD_STATIONS_SQL = (
    "SELECT id, channel_name, boot_status, heartbeat_interval"  # noqa: S608
    f" FROM {Station._meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
)


def _stations_save(changes: dict[int, dict[str, Any]]) -> None:
    """Write the batch's station changes: one UPDATE per set of fields (connected, booted, both, released: a few per
    batch, not two round trips per station as a reconnect storm's claims and boots were)."""
    groups: dict[tuple[str, ...], list[Station]] = {}
    for pk, values in changes.items():
        groups.setdefault(tuple(sorted(values)), []).append(Station(pk=pk, **values))
    for names, rows in groups.items():
        if connection.vendor == "postgresql":
            update_rows(Station, names, rows)
        else:
            Station.objects.bulk_update(rows, names)


def connectors_load(ctx: BatchContext, calls: list[IncomingCall]) -> None:
    """The EVSEs and connectors of the batch's StatusNotification stations and their statuses: one query.

    A station has a few of them; its row is locked (``stations_load``), so no other batch creates or changes them
    before COMMIT.
    """
    if not calls:
        return
    # No ordering: the model's (by station) would join the station table for nothing.
    rows = Evse.objects.filter(station_id__in={c.station.pk for c in calls}).order_by().values_list(
        "pk", "station_id", "evse_id", "connectors__pk", "connectors__connector_id", "connectors__status",
        "connectors__status_at",
    )  # fmt: skip
    for evse_pk, station_pk, evse_id, connector_pk, connector_id, status, status_at in rows:
        ctx.evses[(station_pk, evse_id)] = evse_pk
        if connector_pk is not None:
            ctx.connectors[(station_pk, evse_id, connector_id)] = ConnectorState(connector_pk, status, status_at)


def _connectors_save(ctx: BatchContext) -> None:
    """Create the EVSEs and connectors first reported in the batch, update the changed ones: three statements."""
    created = [(key, c) for key, c in ctx.connectors.items() if c.pk is None]
    new_evses = {(pk, evse_id) for (pk, evse_id, _), _c in created if (pk, evse_id) not in ctx.evses}
    if new_evses:  # primary keys read back (RETURNING): the new connectors refer to them
        rows = Evse.objects.bulk_create([Evse(station_id=pk, evse_id=evse_id) for pk, evse_id in sorted(new_evses)])
        ctx.evses.update({(row.station_id, row.evse_id): cast(int, row.pk) for row in rows})
    if created:
        bulk_insert(
            Connector,
            [
                Connector(evse_id=ctx.evses[(pk, evse_id)], connector_id=connector_id, status=c.status,
                          status_at=c.status_at)
                for (pk, evse_id, connector_id), c in created
            ],
        )  # fmt: skip
    changed = [Connector(pk=c.pk, status=c.status, status_at=c.status_at) for c in ctx.connectors.values() if c.changed]
    if not changed:
        return
    if connection.vendor == "postgresql":
        update_rows(Connector, ("status", "status_at"), changed)
    else:
        Connector.objects.bulk_update(changed, ["status", "status_at"])


def answered_load(ctx: BatchContext, calls: list[IncomingCall]) -> None:
    """Answers already stored for retransmitted CALLs: one query per batch.

    A retransmit is the same message id from the same station *with the same payload* (``payload_sha256``) within
    ``OCPP_RETRANSMIT_WINDOW`` seconds. OCPP-J asks message ids to be unique per connection only: a station that
    restarts its counter after a reboot sends old ids with new data, and that is stored and answered fresh.
    """
    keys = {(c.station.pk, c.message_id, call_digest(ctx, c)) for c in calls if c.action not in ANSWERED_FRESH}
    if not keys:
        return
    since = ctx.now - timedelta(seconds=settings.OCPP_RETRANSMIT_WINDOW)
    rows: Iterable[tuple[int, str, str, Any]]
    if connection.vendor == "postgresql":
        # The (station, message id, digest) triples probe the partial index messagelog_incoming_call one by one,
        # bounded to the window; no ORM compile or per-value binding (1.1 ms of CPU per batch through the ORM).
        station_pks, message_ids, digests = zip(*keys, strict=True)
        with connection.cursor() as cursor:
            cursor.execute(_ANSWERED_SQL, [list(station_pks), list(message_ids), list(digests), since])
            rows = [(pk, mid, digest, _json_value(response)) for pk, mid, digest, response in cursor.fetchall()]
    else:
        rows = MessageLog.objects.filter(
            direction=Direction.IN,
            message_type=ocpp_j.CALL,
            error_code="",
            station_id__in={k[0] for k in keys},
            message_id__in={k[1] for k in keys},
            payload_sha256__in={k[2] for k in keys},
            created_at__gte=since,
        ).values_list("station_id", "message_id", "payload_sha256", "response")
    for station_pk, message_id, digest, response in rows:
        if (station_pk, message_id, digest) in keys:
            ctx.answered[(station_pk, message_id, digest)] = CallOutcome(payload=response, retransmit=True)


# One probe of the partial index messagelog_incoming_call per (station, message id) pair, whatever the table's
# statistics say: LATERAL ... LIMIT 1 runs once per triple. (A plain join was planned from statistics, and with stale
# ones, e.g. autovacuum off, it scanned the whole index per batch: 1.6 s at 170,000 rows.)
# Only the table name and constants are interpolated (no input): S608 does not apply.
_ANSWERED_SQL = (
    "SELECT k.station_id, k.message_id, k.digest, m.response"  # noqa: S608
    " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS k(station_id, message_id, digest)"
    f" CROSS JOIN LATERAL (SELECT r.response FROM {MessageLog._meta.db_table} r"
    " WHERE r.station_id = k.station_id AND r.message_id = k.message_id"
    f" AND r.direction = '{Direction.IN.value}' AND r.message_type = {ocpp_j.CALL} AND r.error_code = ''"
    " AND r.created_at >= %s AND r.payload_sha256 = k.digest"
    " ORDER BY r.created_at DESC LIMIT 1) AS m"
)


def _json_value(value: Any) -> Any:
    """A jsonb column as the ORM's JSONField reads it (psycopg returns it decoded already; text on a cast)."""
    return json.loads(value) if isinstance(value, str) else value


def transactions_load(ctx: BatchContext, calls: list[IncomingCall]) -> None:
    """The batch's transactions (locked until COMMIT) and which of their events' seqNos are stored: two queries.

    Both look up exact pairs, one index probe each (not the cross product of two IN lists: stations number their
    transactions alike, and an old transaction's seqNos would match another's).
    """
    if not calls:
        return
    keys = {(c.station.pk, c.payload["transactionInfo"]["transactionId"]) for c in calls}
    rows: Iterable[Transaction]
    if connection.vendor == "postgresql":
        station_pks, tx_ids = zip(*keys, strict=True)
        rows = Transaction.objects.raw(_TRANSACTIONS_SQL, [list(station_pks), list(tx_ids)])
    else:
        rows = Transaction.objects.filter(_pairs_q("station_id", "transaction_id", keys))
    ctx.transactions = {(tx.station_id, tx.transaction_id): tx for tx in rows}
    events = {
        (tx.pk, c.payload["seqNo"])
        for c in calls
        if (tx := ctx.transactions.get((c.station.pk, c.payload["transactionInfo"]["transactionId"])))
    }
    if not events:
        return
    if connection.vendor == "postgresql":
        tx_pks, seq_nos = zip(*events, strict=True)
        with connection.cursor() as cursor:
            cursor.execute(_STORED_EVENTS_SQL, [list(tx_pks), list(seq_nos)])
            ctx.stored_events = {(pk, seq) for pk, seq in cursor.fetchall()}
    else:
        query = _pairs_q("transaction_id", "seq_no", events)
        ctx.stored_events = set(TransactionEvent.objects.filter(query).values_list("transaction_id", "seq_no"))


def _pairs_q(first: str, second: str, pairs: Iterable[tuple[Any, Any]]) -> Q:
    return functools.reduce(operator.or_, (Q(**{first: a, second: b}) for a, b in pairs))


# Exact pairs, each one probe of the table's unique index (LATERAL: whatever the statistics say). Only table names
# are interpolated (no input): S608 does not apply.
_TRANSACTIONS_SQL = (
    "SELECT t.* FROM unnest(%s::bigint[], %s::text[]) AS k(station_id, transaction_id)"  # noqa: S608
    f" CROSS JOIN LATERAL (SELECT * FROM {Transaction._meta.db_table} r"
    " WHERE r.station_id = k.station_id AND r.transaction_id = k.transaction_id FOR UPDATE) AS t"
)
_STORED_EVENTS_SQL = (
    "SELECT k.transaction_id, k.seq_no FROM unnest(%s::bigint[], %s::int[]) AS k(transaction_id, seq_no)"  # noqa: S608
    f" CROSS JOIN LATERAL (SELECT 1 FROM {TransactionEvent._meta.db_table} e"
    " WHERE e.transaction_id = k.transaction_id AND e.seq_no = k.seq_no LIMIT 1) AS e"
)


def _transactions_save(ctx: BatchContext) -> None:
    """Write the changed fields of the batch's transactions: one UPDATE on PostgreSQL, one per row elsewhere."""
    if not ctx.tx_changed:
        return
    by_pk = {tx.pk: tx for tx in ctx.transactions.values()}
    if connection.vendor != "postgresql":
        for pk, names in ctx.tx_changed.items():
            tx = by_pk[pk]
            Transaction.objects.filter(pk=pk).update(**{name: getattr(tx, name) for name in names})
        return
    columns = sorted(set[str]().union(*ctx.tx_changed.values()))
    update_rows(Transaction, columns, [by_pk[pk] for pk in ctx.tx_changed])
