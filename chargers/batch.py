"""CSMS domain operations.

Station-initiated messages are applied in batches by the group-commit writer (``batch_apply``): each action's
handler turns one validated payload into rows and an answer, hot-path rows (message log, meter values, last-seen)
are written in bulk once per batch, and the answers are released only after COMMIT.

CSMS-initiated messages go through ``station_call`` / ``station_call_async``, from any process, over the channel
layer to whichever server process holds the station's socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar, cast

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, CharField, Field, JSONField, Model, Q, Value, When
from psycopg.types.json import Jsonb

from chargers import ocpp_j
from chargers.models import (
    DEVICE_VARIABLE_KEY,
    ENERGY_IMPORT_REGISTER,
    BootStatus,
    ChargingProfile,
    Connector,
    DerAlarm,
    DerControl,
    DeviceVariable,
    Direction,
    EvChargingNeeds,
    Evse,
    IdToken,
    MessageLog,
    MeterValue,
    ProfileSource,
    Station,
    StationEvent,
    StationEventKind,
    Transaction,
    TransactionEvent,
)
from chargers.ocpp_j import OcppError
from chargers.writer import after_batch, writer_loop

LOG = logging.getLogger(__name__)
#: Channel-layer group committed telemetry is published to (see ``telemetry_committed``); the dashboard joins it.
TELEMETRY_GROUP = "telemetry"


# --------------------------------------------------------------------------------------------------------------
# Jobs the consumer hands to the writer
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StationRef:
    """What a connection knows about its station without reading the database again."""

    pk: int
    station_id: str
    version: str


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The answer to an incoming CALL: a CALLRESULT payload, or a CALLERROR code and description."""

    payload: dict[str, Any] | None = None
    error_code: str = ""
    error_description: str = ""
    retransmit: bool = False  # answered from the message log, nothing new stored


@dataclass(frozen=True, slots=True)
class IncomingCall:
    station: StationRef
    message_id: str
    action: str
    payload: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class IncomingSend:
    """OCPP 2.1 SEND (type 6): stored, never answered."""

    station: StationRef
    message_id: str
    action: str
    payload: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A frame recorded as is: CALLERRORs we sent for bad frames, CALLRESULTERRORs, CSMS calls and their answers."""

    station: StationRef
    direction: str
    message_type: int
    message_id: str = ""
    action: str = ""
    payload: Any = None
    raw: str = ""
    response: Any = None
    error_code: str = ""
    error_description: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    responded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Connected:
    station: StationRef
    channel_name: str
    at: datetime
    # A claim for a handshake that was abandoned (its consumer cancelled) must not be applied.
    drop_if_abandoned: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Disconnected:
    station: StationRef
    channel_name: str
    at: datetime
    code: int | None


Job = IncomingCall | IncomingSend | LogEntry | Connected | Disconnected


@dataclass(frozen=True, slots=True)
class TelemetryUpdate:
    """One live reading for the dashboard feed and downstream estimators (integer units, UTC timestamp).

    ``kind``: "meter" (``values`` maps measurand[.phase] to its stored integer), "status" (``status`` is the
    connector status) or "connection" (``status`` is "online"/"offline").
    """

    station_id: str
    kind: str
    timestamp: datetime
    evse_id: int = 0
    values: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    status: str = ""
    transaction_id: str = ""


class BatchContext:
    """Rows collected while a batch's jobs run, written in bulk before COMMIT."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.logs: list[tuple[Any, ...]] = []  # MESSAGE_LOG_COLUMNS
        self.meter_values: list[tuple[Any, ...]] = []  # METER_VALUE_COLUMNS
        self.events: list[StationEvent] = []
        self.touched: set[int] = set()
        self.telemetry: list[TelemetryUpdate] = []
        self.answered: dict[tuple[int, str], CallOutcome] = {}
        # TransactionEvent state for the batch: loaded once (_load_transactions), changed in memory, written in flush.
        self.transactions: dict[tuple[int, str], Transaction] = {}
        self.stored_events: set[tuple[int, int]] = set()  # (transaction pk, seqNo) already in the database
        self.tx_events: list[tuple[Any, ...]] = []  # TRANSACTION_EVENT_COLUMNS
        self.tx_changed: dict[int, set[str]] = {}  # transaction pk -> fields to write

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
    ) -> None:
        """Queue one MessageLog row (a plain tuple: building Django models here cost a tenth of the CSMS's CPU)."""
        self.logs.append(
            (station.pk, direction, message_type, message_id, action, station.version, payload, raw, response,
             error_code, error_description[:255], created_at, responded_at)
        )  # fmt: skip

    def flush(self) -> None:
        insert_rows(TransactionEvent, TRANSACTION_EVENT_COLUMNS, self.tx_events)
        _transactions_save(self)
        insert_rows(MeterValue, METER_VALUE_COLUMNS, self.meter_values)
        bulk_insert(StationEvent, self.events)
        insert_rows(MessageLog, MESSAGE_LOG_COLUMNS, self.logs)
        if self.touched:
            _stations_touch(self.touched, self.now)


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
    "error_code", "error_description", "created_at", "responded_at",
)  # fmt: skip
TRANSACTION_EVENT_COLUMNS = (
    "transaction_id", "seq_no", "event_type", "trigger_reason", "timestamp", "received_at", "offline",
    "charging_state", "payload",
)  # fmt: skip
METER_VALUE_COLUMNS = (
    "station_id", "evse_id", "transaction_id", "timestamp", "received_at", "measurand", "phase", "location",
    "context", "value", "unit", "source",
)  # fmt: skip


def bulk_insert(model: type[Model], rows: Sequence[Model]) -> None:
    """Insert new rows (primary keys are not read back). On PostgreSQL through COPY, elsewhere bulk_create.

    bulk_create quotes every value in Python (psycopg's client-side binding of its UNNEST arrays): a third of the
    CSMS's CPU under load. COPY hands the rows to psycopg's C row writer; values are still prepared by each field
    (pre_save, get_db_prep_save), exactly as bulk_create prepares them, and errors are Django's (IntegrityError).
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(rows)
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields if f.column)
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([f.get_db_prep_save(f.pre_save(row, True), connection) for f in fields])


def insert_rows(model: type[Model], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert plain rows, values in ``columns`` order (attribute names, e.g. ``station_id``), as the ORM would.

    The writer's hot path: on PostgreSQL a COPY of the tuples as they are (JSON columns wrapped as ``Jsonb``),
    with no model instance or per-field preparation; elsewhere models built from the rows and ``bulk_create``.
    Values must already be what the column stores (ints, strs, aware datetimes, JSON-able data or None).
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows])
        return
    sql, json_at = _copy_plan(model, tuple(columns))
    with connection.cursor() as cursor, connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
        if not json_at:
            for row in rows:
                copy.write_row(row)
            return
        for row in rows:
            values = list(row)
            for i in json_at:
                if values[i] is not None:  # None is SQL NULL, as the ORM stores it for a nullable JSONField
                    values[i] = Jsonb(values[i], dumps=ocpp_j.dumps_bytes)
            copy.write_row(values)


@functools.cache
def _copy_plan(model: type[Model], columns: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    fields = [cast("Field[Any, Any]", model._meta.get_field(name)) for name in columns]  # concrete columns only
    quote = connection.ops.quote_name
    names = ", ".join(quote(cast(str, f.column)) for f in fields)
    json_at = tuple(i for i, f in enumerate(fields) if isinstance(f, JSONField))
    return f"COPY {quote(model._meta.db_table)} ({names}) FROM STDIN", json_at


def batch_apply(jobs: Sequence[Job]) -> list[Any]:
    """Apply ``jobs`` in one transaction; returns one outcome per job. Called by the writer thread only."""
    ctx = BatchContext(datetime.now(UTC))
    with transaction.atomic():
        calls = [j for j in jobs if isinstance(j, IncomingCall)]
        _load_answered(ctx, calls)
        _load_transactions(ctx, [c for c in calls if c.action == "TransactionEvent"])
        outcomes = [_apply_job(ctx, job) for job in jobs]
        ctx.flush()
    if ctx.telemetry:
        after_batch(_telemetry_released, ctx.telemetry)
    return outcomes


def _telemetry_released(updates: list[TelemetryUpdate]) -> None:
    telemetry_committed(updates=updates)


def telemetry_committed(*, updates: list[TelemetryUpdate]) -> None:
    """The one place downstream refreshes hang off committed telemetry (meter values, statuses, connections).

    Runs on the writer thread after the COMMITs that stored ``updates`` and the answers to the stations that sent
    them, with everything committed in the last ``OCPP_TELEMETRY_INTERVAL`` seconds (``after_batch``); keep it
    quick (enqueue Celery work with ``transaction.on_commit`` rather than computing here). Also publishes the live
    feed to the channel-layer group ``telemetry`` as
    ``{"type": "telemetry.update", "updates": [TelemetryUpdate as dict, ...]}``.
    """
    from fleet.telemetry import on_telemetry_committed  # fleet: vehicle sessions, SoC beliefs (enqueues only)

    on_telemetry_committed(updates)
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "telemetry.update", "updates": [_telemetry_dict(u) for u in updates]}
    loop = writer_loop()
    if loop is not None and not loop.is_closed():
        # On the CSMS writer thread: publish from the server's own loop, without waiting and without a new loop.
        future = asyncio.run_coroutine_threadsafe(layer.group_send(TELEMETRY_GROUP, message), loop)
        future.add_done_callback(_publish_done)
        return
    try:
        async_to_sync(layer.group_send)(TELEMETRY_GROUP, message)
    except Exception:  # the live feed is best effort: the data is already committed
        LOG.warning("telemetry publish failed", exc_info=True)


def _publish_done(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        LOG.warning("telemetry publish failed", exc_info=future.exception())


def _telemetry_dict(update: TelemetryUpdate) -> dict[str, Any]:
    # By hand: dataclasses.asdict deep-copies every value, several percent of the CSMS's CPU under load.
    return {
        "station_id": update.station_id,
        "kind": update.kind,
        "timestamp": update.timestamp.isoformat(),
        "evse_id": update.evse_id,
        "values": dict(update.values),
        "units": dict(update.units),
        "status": update.status,
        "transaction_id": update.transaction_id,
    }


def _load_answered(ctx: BatchContext, calls: list[IncomingCall]) -> None:
    """Answers already stored for retransmitted CALLs (same station, same message id): one query per batch."""
    if not calls:
        return
    keys = {(c.station.pk, c.message_id) for c in calls}
    rows: Iterable[tuple[int, str, Any]]
    if connection.vendor == "postgresql":
        # The (station, message id) pairs joined against the unique index: an index probe per pair, and no ORM
        # compile or per-value binding (1.1 ms of CPU per batch through the ORM's two IN lists).
        with connection.cursor() as cursor:
            cursor.execute(_ANSWERED_SQL, [[k[0] for k in keys], [k[1] for k in keys]])
            rows = [(pk, mid, _json_value(response)) for pk, mid, response in cursor.fetchall()]
    else:
        rows = MessageLog.objects.filter(
            direction=Direction.IN,
            message_type=ocpp_j.CALL,
            error_code="",
            station_id__in={k[0] for k in keys},
            message_id__in={k[1] for k in keys},
        ).values_list("station_id", "message_id", "response")
    for station_pk, message_id, response in rows:
        if (station_pk, message_id) in keys:
            ctx.answered[(station_pk, message_id)] = CallOutcome(payload=response, retransmit=True)


# One probe of the partial unique index messagelog_unique_incoming_call per (station, message id) pair, whatever
# the table's statistics say: LATERAL ... LIMIT 1 runs once per pair. (A plain join was planned from statistics, and
# with stale ones, e.g. autovacuum off, it scanned the whole index per batch: 1.6 s at 170,000 rows.)
# Only the table name and constants are interpolated (no input): S608 does not apply.
_ANSWERED_SQL = (
    "SELECT k.station_id, k.message_id, m.response"  # noqa: S608
    " FROM unnest(%s::bigint[], %s::text[]) AS k(station_id, message_id)"
    f" CROSS JOIN LATERAL (SELECT r.response FROM {MessageLog._meta.db_table} r"
    " WHERE r.station_id = k.station_id AND r.message_id = k.message_id"
    f" AND r.direction = '{Direction.IN.value}' AND r.message_type = {ocpp_j.CALL} AND r.error_code = ''"
    " LIMIT 1) AS m"
)


def _json_value(value: Any) -> Any:
    """A jsonb column as the ORM's JSONField reads it (psycopg returns it decoded already; text on a cast)."""
    return json.loads(value) if isinstance(value, str) else value


def _apply_job(ctx: BatchContext, job: Job) -> Any:
    if isinstance(job, IncomingCall):
        return _apply_call(ctx, job)
    if isinstance(job, IncomingSend):
        ctx.log(
            job.station,
            Direction.IN,
            ocpp_j.SEND,
            message_id=job.message_id,
            action=job.action,
            payload=job.payload,
            created_at=job.received_at,
        )
        ctx.touched.add(job.station.pk)
        return None
    if isinstance(job, LogEntry):
        ctx.log(
            job.station,
            job.direction,
            job.message_type,
            message_id=job.message_id,
            action=job.action,
            payload=job.payload,
            raw=job.raw,
            response=job.response,
            error_code=job.error_code,
            error_description=job.error_description,
            created_at=job.created_at,
            responded_at=job.responded_at,
        )
        return None
    if isinstance(job, Connected):
        return _station_connected(ctx, job)
    return _station_disconnected(ctx, job)


def _apply_call(ctx: BatchContext, job: IncomingCall) -> CallOutcome:
    key = (job.station.pk, job.message_id)
    known = ctx.answered.get(key)
    if known is not None:
        return CallOutcome(known.payload, known.error_code, known.error_description, retransmit=True)
    handler = HANDLERS.get(job.action, _generic_handler(job.action))
    try:
        payload = handler(ctx, job.station, job.payload)
        outcome = CallOutcome(payload=payload)
    except OcppError as exc:
        outcome = CallOutcome(error_code=exc.code, error_description=exc.description)
    if not outcome.error_code:
        ctx.answered[key] = outcome
    ctx.log(
        job.station,
        Direction.IN,
        ocpp_j.CALL,
        message_id=job.message_id,
        action=job.action,
        payload=job.payload,
        response=outcome.payload,
        error_code=outcome.error_code,
        error_description=outcome.error_description,
        created_at=job.received_at,
        responded_at=ctx.now,
    )
    ctx.touched.add(job.station.pk)
    return outcome


# --------------------------------------------------------------------------------------------------------------
# Connection lifecycle
# --------------------------------------------------------------------------------------------------------------


def _station_connected(ctx: BatchContext, job: Connected) -> str:
    """Claim the station for ``job.channel_name``; returns the channel of a connection it replaces ("" if none)."""
    previous = Station.objects.filter(pk=job.station.pk).values_list("channel_name", flat=True).first() or ""
    Station.objects.filter(pk=job.station.pk).update(
        channel_name=job.channel_name,
        online=True,
        connected_at=job.at,
        last_seen=job.at,
        ocpp_version=job.station.version,
    )
    if previous and previous != job.channel_name:
        ctx.event(job.station, StationEventKind.REPLACED, at=job.at, summary="a new connection replaced the old one")
    ctx.event(job.station, StationEventKind.CONNECTED, at=job.at, summary=f"OCPP {job.station.version}")
    ctx.telemetry.append(TelemetryUpdate(job.station.station_id, "connection", job.at, status="online"))
    return previous if previous != job.channel_name else ""


def _station_disconnected(ctx: BatchContext, job: Disconnected) -> bool:
    """Mark offline only if this connection still owns the station (a replaced socket must not)."""
    released = Station.objects.filter(pk=job.station.pk, channel_name=job.channel_name).update(
        channel_name="", online=False
    )
    if released:
        ctx.event(job.station, StationEventKind.DISCONNECTED, at=job.at, summary=f"close code {job.code}")
        ctx.telemetry.append(TelemetryUpdate(job.station.station_id, "connection", job.at, status="offline"))
    return bool(released)


def station_heartbeat_timeouts_mark(*, now: datetime | None = None) -> int:
    """Mark offline every online station silent for longer than its heartbeat interval plus the grace period.

    Each station is claimed with a conditional UPDATE on the ``last_seen`` we read, so a message arriving
    meanwhile wins and a concurrent sweep cannot record the timeout twice. Returns how many were marked.
    """
    now = now or datetime.now(UTC)
    grace = timedelta(seconds=settings.OCPP_HEARTBEAT_GRACE)
    shortest = (
        Station.objects.filter(online=True)
        .order_by("heartbeat_interval")
        .values_list("heartbeat_interval", flat=True)[:1]
    )
    if not shortest:
        return 0
    horizon = now - grace - timedelta(seconds=shortest[0])
    candidates = Station.objects.filter(online=True, last_seen__lt=horizon).values_list(
        "pk", "station_id", "last_seen", "heartbeat_interval"
    )
    marked = 0
    for pk, station_id, last_seen, interval in candidates:
        # last_seen is never NULL here (the ``__lt`` filter excludes it); the check narrows the type.
        if last_seen is None or last_seen + timedelta(seconds=interval) + grace >= now:
            continue
        with transaction.atomic():
            claimed = Station.objects.filter(pk=pk, online=True, last_seen=last_seen).update(online=False)
            if claimed:
                StationEvent.objects.create(
                    station_id=pk,
                    kind=StationEventKind.HEARTBEAT_TIMEOUT,
                    timestamp=now,
                    received_at=now,
                    summary=f"silent since {last_seen.isoformat()} (interval {interval} s)",
                    data={"last_seen": last_seen.isoformat(), "heartbeat_interval": interval},
                )
                marked += 1
                transaction.on_commit(partial(_offline_publish, station_id=station_id, at=now))
    return marked


def _offline_publish(*, station_id: str, at: datetime) -> None:
    telemetry_committed(updates=[TelemetryUpdate(station_id, "connection", at, status="offline")])


# --------------------------------------------------------------------------------------------------------------
# Station-initiated actions
# --------------------------------------------------------------------------------------------------------------

Handler = Callable[[BatchContext, StationRef, dict[str, Any]], dict[str, Any]]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ts(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise OcppError("PropertyConstraintViolation", f"not an ISO 8601 date-time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def station_boot(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """BootNotification: record what the station is, answer with its configured registration status."""
    row = Station.objects.only("boot_status", "heartbeat_interval").get(pk=station.pk)
    cs = payload["chargingStation"]
    modem = cs.get("modem", {})
    Station.objects.filter(pk=station.pk).update(
        vendor=cs["vendorName"],
        model=cs["model"],
        serial_number=cs.get("serialNumber", ""),
        firmware_version=cs.get("firmwareVersion", ""),
        last_boot_at=ctx.now,
        last_boot_reason=payload["reason"],
        ocpp_version=station.version,
    )
    ctx.event(
        station,
        StationEventKind.BOOTED,
        summary=f"{payload['reason']}: {row.boot_status}",
        reason=payload["reason"],
        status=row.boot_status,
        firmware=cs.get("firmwareVersion", ""),
        modem=modem,
    )
    return {"currentTime": _iso(ctx.now), "interval": row.heartbeat_interval, "status": row.boot_status}


def _heartbeat(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    return {"currentTime": _iso(ctx.now)}


def connector_status_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """StatusNotification: the connector's status, newest station timestamp wins."""
    at = _ts(payload["timestamp"], ctx.now)
    evse, _ = Evse.objects.get_or_create(station_id=station.pk, evse_id=payload["evseId"])
    connector, created = Connector.objects.get_or_create(
        evse=evse, connector_id=payload["connectorId"], defaults={"status": payload["connectorStatus"], "status_at": at}
    )
    if not created and (connector.status_at is None or connector.status_at <= at):
        Connector.objects.filter(pk=connector.pk).update(status=payload["connectorStatus"], status_at=at)
    ctx.telemetry.append(
        TelemetryUpdate(station.station_id, "status", at, evse_id=payload["evseId"], status=payload["connectorStatus"])
    )
    return {}


def _id_token_info(id_token: dict[str, Any]) -> dict[str, Any]:
    token = IdToken.objects.select_related("group").filter(id_token=id_token["idToken"], type=id_token["type"]).first()
    if token is None:
        return {"status": "Unknown"}
    info: dict[str, Any] = {"status": token.status}
    if token.group is not None:
        info["groupIdToken"] = {"idToken": token.group.id_token, "type": token.group.type}
    return info


def id_token_authorize(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    return {"idTokenInfo": _id_token_info(payload["idToken"])}


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


def _meter_rows(
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
        at = _ts(mv["timestamp"], ctx.now)
        values: dict[str, int] = {}
        units: dict[str, str] = {}
        for sv in mv["sampledValue"]:
            measurand = sv.get("measurand", ENERGY_IMPORT_REGISTER)
            unit, factor, multiplier = _unit_for(measurand, sv)
            value = round(float(sv["value"]) * (10.0**multiplier) * factor)
            phase, location = sv.get("phase", ""), sv.get("location", "")
            rows.append(
                (station.pk, evse_id, tx_pk, at, ctx.now, measurand, phase, location, sv.get("context", ""), value,
                 unit, source)
            )  # fmt: skip
            name = f"{measurand}.{phase}" if phase else measurand
            if location in ("", "Outlet"):
                values[name] = value
                units[name] = unit
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
    update = _meter_rows(ctx, station, payload["meterValue"], evse_id=payload["evseId"], source="MeterValues")
    if update is not None:
        ctx.telemetry.append(update)
    return {}


def transaction_event_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """TransactionEvent: stored once per (transaction, seqNo); the transaction's state follows the highest seqNo.

    Offline-queued events replayed out of order still land as their own rows (read them ordered by seqNo), and an
    older event never overwrites the state set by a newer one. Set-based per batch: the batch's transactions and
    their stored seqNos are read in one go (``_load_transactions``), events are COPYed and the transactions'
    new state written once in ``BatchContext.flush`` (a regulating fleet sends one event per vehicle a second).
    """
    info = payload["transactionInfo"]
    at = _ts(payload["timestamp"], ctx.now)
    seq_no = payload["seqNo"]
    evse = payload.get("evse") or {}
    tx = ctx.transactions.get((station.pk, info["transactionId"]))
    if tx is None:  # a new transaction (its first event, or the first after a restart of the CSMS's cache)
        tx, _ = Transaction.objects.get_or_create(
            station_id=station.pk,
            transaction_id=info["transactionId"],
            defaults={"evse_id": evse.get("id"), "connector_id": evse.get("connectorId"), "started_at": at},
        )
        ctx.transactions[(station.pk, info["transactionId"])] = tx
    response: dict[str, Any] = {}
    if "idToken" in payload:
        response["idTokenInfo"] = _id_token_info(payload["idToken"])
    if (tx.pk, seq_no) in ctx.stored_events:
        return response  # the same event again (e.g. replayed after a reconnect): already stored
    # Meter values first: one it cannot read refuses the whole event (CALLERROR), nothing of it stored.
    update = _meter_rows(
        ctx,
        station,
        payload.get("meterValue", []),
        evse_id=evse.get("id", tx.evse_id or 0),
        source="TransactionEvent",
        transaction=tx,
    )
    ctx.stored_events.add((tx.pk, seq_no))
    ctx.tx_events.append(
        (tx.pk, seq_no, payload["eventType"], payload["triggerReason"], at, ctx.now, bool(payload.get("offline")),
         info.get("chargingState", ""), payload)
    )  # fmt: skip
    if update is not None:
        ctx.telemetry.append(update)
    changed = tx.event_apply(payload, at=at, energy_wh=update.values.get(ENERGY_IMPORT_REGISTER) if update else None)
    if changed:
        ctx.tx_changed.setdefault(tx.pk, set()).update(changed)
    return response


def _load_transactions(ctx: BatchContext, calls: list[IncomingCall]) -> None:
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


def update_rows(model: type[Model], names: Sequence[str], objs: Sequence[Model]) -> None:
    """PostgreSQL: set ``names`` of every object in ``objs`` to its in-memory values in one UPDATE ... FROM unnest.

    The ORM's ``bulk_update`` builds a CASE per field and object (compile cost grows with the batch); here every
    column travels as one array parameter.
    """
    fields = [cast("Field[Any, Any]", model._meta.get_field(name)) for name in names]
    pk = model._meta.pk
    assert pk is not None
    quote = connection.ops.quote_name
    columns = [pk, *fields]
    # Text columns travel as text[]: the assignment to varchar(n) then refuses an over-long value (a cast to
    # varchar(n)[] would cut it short).
    arrays = ", ".join(f"%s::{'text' if isinstance(f, CharField) else f.db_type(connection)}[]" for f in columns)
    aliases = ", ".join(f"c{i}" for i in range(len(columns)))
    sets = ", ".join(f"{quote(cast(str, f.column))} = v.c{i}" for i, f in enumerate(columns) if i)
    sql = (
        f"UPDATE {quote(model._meta.db_table)} AS t SET {sets} FROM unnest({arrays}) AS v({aliases})"  # noqa: S608
        f" WHERE t.{quote(cast(str, pk.column))} = v.c0"
    )
    params = [[f.get_db_prep_save(getattr(obj, f.attname), connection) for obj in objs] for f in columns]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def device_report_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """NotifyReport: upsert each reported variable attribute of the device model."""
    rows: list[DeviceVariable] = []
    for item in payload.get("reportData", []):
        component, variable = item["component"], item["variable"]
        evse = component.get("evse") or {}
        characteristics = item.get("variableCharacteristics") or {}
        for attribute in item["variableAttribute"]:
            rows.append(
                DeviceVariable(
                    station_id=station.pk,
                    component=component["name"],
                    component_instance=component.get("instance", ""),
                    evse_id=evse.get("id", 0),
                    connector_id=evse.get("connectorId", 0),
                    variable=variable["name"],
                    variable_instance=variable.get("instance", ""),
                    attribute_type=attribute.get("type", "Actual"),
                    value=attribute.get("value", ""),
                    mutability=attribute.get("mutability", ""),
                    data_type=characteristics.get("dataType", ""),
                    unit=characteristics.get("unit", ""),
                    updated_at=ctx.now,
                )
            )
    if rows:
        DeviceVariable.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=DEVICE_VARIABLE_KEY,
            update_fields=["value", "mutability", "data_type", "unit", "updated_at"],
        )
    return {}


def _notify_event(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    for item in payload["eventData"]:
        ctx.event(
            station,
            StationEventKind.NOTIFY_EVENT,
            at=_ts(item["timestamp"], ctx.now),
            summary=f"{item['component']['name']}.{item['variable']['name']}={item['actualValue']} ({item['trigger']})",
            **item,
        )
    return {}


def _security_event(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.event(
        station,
        StationEventKind.SECURITY_EVENT,
        at=_ts(payload["timestamp"], ctx.now),
        summary=payload["type"],
        **payload,
    )
    return {}


def _event_handler(kind: str, summary_key: str, response: dict[str, Any] | None = None) -> Handler:
    def handle(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
        ctx.event(station, kind, summary=str(payload.get(summary_key, "")), **payload)
        return dict(response or {})

    return handle


def _data_transfer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.event(station, StationEventKind.DATA_TRANSFER, summary=payload["vendorId"], **payload)
    return {"status": "UnknownVendorId"}  # no vendor extensions are implemented


def _charging_limit(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    limit = payload["chargingLimit"]
    ctx.event(station, StationEventKind.CHARGING_LIMIT, summary=limit["chargingLimitSource"], **payload)
    return {}


def charging_profiles_report_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """ReportChargingProfiles: the station's installed profiles replace what it reported before for them."""
    evse_id = payload["evseId"]
    profiles = payload["chargingProfile"]
    ChargingProfile.objects.filter(
        station_id=station.pk,
        evse_id=evse_id,
        source=ProfileSource.REPORTED,
        profile_id__in=[p["id"] for p in profiles],
    ).update(active=False)
    ChargingProfile.objects.bulk_create(
        ChargingProfile(
            station_id=station.pk,
            evse_id=evse_id,
            profile_id=p["id"],
            stack_level=p["stackLevel"],
            purpose=p["chargingProfilePurpose"],
            kind=p["chargingProfileKind"],
            source=ProfileSource.REPORTED,
            limit_source=str(payload["chargingLimitSource"]),
            payload=p,
            recorded_at=ctx.now,
        )
        for p in profiles
    )
    return {}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else round(float(value))


def ev_charging_needs_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """NotifyEVChargingNeeds (2.0.1 and 2.1 incl. v2xChargingParameters), stored in W / Wh."""
    needs = payload["chargingNeeds"]
    ac = needs.get("acChargingParameters") or {}
    dc = needs.get("dcChargingParameters") or {}
    v2x = needs.get("v2xChargingParameters") or {}
    departure = needs.get("departureTime")
    EvChargingNeeds.objects.create(
        station_id=station.pk,
        evse_id=payload["evseId"],
        received_at=ctx.now,
        requested_energy_transfer=needs["requestedEnergyTransfer"],
        control_mode=needs.get("controlMode", ""),
        mobility_needs_mode=needs.get("mobilityNeedsMode", ""),
        departure_time=_ts(departure, ctx.now) if departure else None,
        energy_amount_wh=_int_or_none(ac.get("energyAmount", dc.get("energyAmount"))),
        ev_max_power_w=_int_or_none(dc.get("evMaxPower")),
        min_charge_power_w=_int_or_none(v2x.get("minChargePower")),
        max_charge_power_w=_int_or_none(v2x.get("maxChargePower")),
        min_discharge_power_w=_int_or_none(v2x.get("minDischargePower")),
        max_discharge_power_w=_int_or_none(v2x.get("maxDischargePower")),
        ev_target_energy_request_wh=_int_or_none(v2x.get("evTargetEnergyRequest")),
        ev_min_energy_request_wh=_int_or_none(v2x.get("evMinEnergyRequest")),
        ev_max_energy_request_wh=_int_or_none(v2x.get("evMaxEnergyRequest")),
        ev_min_v2x_energy_request_wh=_int_or_none(v2x.get("evMinV2XEnergyRequest")),
        ev_max_v2x_energy_request_wh=_int_or_none(v2x.get("evMaxV2XEnergyRequest")),
        target_soc=v2x.get("targetSoC"),
        payload=needs,
    )
    return {"status": "Accepted"}


def _der_alarm(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    DerAlarm.objects.create(
        station_id=station.pk,
        control_type=payload["controlType"],
        grid_event_fault=payload.get("gridEventFault", ""),
        alarm_ended=bool(payload.get("alarmEnded", False)),
        timestamp=_ts(payload["timestamp"], ctx.now),
        received_at=ctx.now,
        extra_info=payload.get("extraInfo", ""),
    )
    return {}


def _der_start_stop(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    DerControl.objects.filter(station_id=station.pk, control_id=payload["controlId"]).update(started=payload["started"])
    if payload.get("supersededIds"):
        DerControl.objects.filter(station_id=station.pk, control_id__in=payload["supersededIds"]).update(
            is_superseded=True
        )
    ctx.event(
        station,
        StationEventKind.DER_START_STOP,
        at=_ts(payload["timestamp"], ctx.now),
        summary=f"{payload['controlId']} {'started' if payload['started'] else 'stopped'}",
        **payload,
    )
    return {}


# ReportDERControl list key -> DERControlEnumType for blocks that do not name their own type.
_DER_BLOCKS = {
    "curve": None,
    "enterService": "EnterService",
    "fixedPFAbsorb": "FixedPFAbsorb",
    "fixedPFInject": "FixedPFInject",
    "fixedVar": "FixedVar",
    "freqDroop": "FreqDroop",
    "gradient": "Gradients",
    "limitMaxDischarge": "LimitMaxDischarge",
}


def der_controls_report_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for key, control_type in _DER_BLOCKS.items():
        for item in payload.get(key, []):
            rows.append(
                DerControl(
                    station_id=station.pk,
                    control_id=item["id"],
                    control_type=control_type or item["curveType"],
                    is_default=bool(item.get("isDefault", False)),
                    is_superseded=bool(item.get("isSuperseded", False)),
                    source=ProfileSource.REPORTED,
                    payload=item,
                    recorded_at=ctx.now,
                )
            )
    DerControl.objects.bulk_create(rows)
    return {}


def _certificate_chain_status(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # No OCSP/CRL client: every certificate's revocation status is honestly Unknown.
    next_update = _iso(ctx.now + timedelta(hours=1))
    return {
        "certificateStatus": [
            {
                "certificateHashData": req["certificateHashData"],
                "source": req["source"],
                "status": "Unknown",
                "nextUpdate": next_update,
            }
            for req in payload["certificateStatusRequests"]
        ]
    }


def _generic_handler(action: str) -> Handler:
    """Actions kept in the message log only; answered with the schema's minimal truthful response."""
    fixed = _FIXED_RESPONSES.get(action, {})

    def handle(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
        response = dict(fixed)
        if action == "VatNumberValidation":
            response["vatNumber"] = payload["vatNumber"]
        return response

    return handle


# No PKI, no ISO 15118 certificate service, no dynamic schedules, no VAT lookup are run by this CSMS: refuse.
_FIXED_RESPONSES: dict[str, dict[str, Any]] = {
    "Get15118EVCertificate": {"status": "Failed", "exiResponse": ""},
    "GetCertificateStatus": {"status": "Failed"},
    "SignCertificate": {"status": "Rejected"},
    "NotifyEVChargingSchedule": {"status": "Accepted"},
    "OpenPeriodicEventStream": {"status": "Accepted"},
    "PullDynamicScheduleUpdate": {"status": "Rejected"},
    "VatNumberValidation": {"status": "Rejected"},
}

HANDLERS: dict[str, Handler] = {
    "BootNotification": station_boot,
    "Heartbeat": _heartbeat,
    "StatusNotification": connector_status_record,
    "Authorize": id_token_authorize,
    "MeterValues": meter_values_record,
    "TransactionEvent": transaction_event_record,
    "NotifyReport": device_report_record,
    "NotifyEvent": _notify_event,
    "NotifyEVChargingNeeds": ev_charging_needs_record,
    "NotifyChargingLimit": _charging_limit,
    "ClearedChargingLimit": _event_handler(StationEventKind.CHARGING_LIMIT_CLEARED, "chargingLimitSource"),
    "ReportChargingProfiles": charging_profiles_report_record,
    "SecurityEventNotification": _security_event,
    "FirmwareStatusNotification": _event_handler(StationEventKind.FIRMWARE_STATUS, "status"),
    "LogStatusNotification": _event_handler(StationEventKind.LOG_STATUS, "status"),
    "ReservationStatusUpdate": _event_handler(StationEventKind.RESERVATION_STATUS, "reservationUpdateStatus"),
    "DataTransfer": _data_transfer,
    "NotifyDERAlarm": _der_alarm,
    "NotifyDERStartStop": _der_start_stop,
    "ReportDERControl": der_controls_report_record,
    "GetCertificateChainStatus": _certificate_chain_status,
}


# --------------------------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------------------------


def stations_add(
    *,
    station_ids: Sequence[str],
    password: str,
    update: bool = False,
    boot_status: str = BootStatus.ACCEPTED,
) -> tuple[int, int]:
    """Create stations (one bulk insert for a whole fleet); ``update`` also resets existing ones' password.

    Returns (created, updated). Raises WeakStationPassword for a password outside 16-40 characters.
    """
    from chargers.passwords import password_hash

    password_hash(password)  # validate once before touching anything
    with transaction.atomic():
        existing = set(Station.objects.filter(station_id__in=station_ids).values_list("station_id", flat=True))
        new = [
            Station(station_id=sid, password_hash=password_hash(password), boot_status=boot_status)
            for sid in dict.fromkeys(station_ids)
            if sid not in existing
        ]
        Station.objects.bulk_create(new, batch_size=1000)
        updated = 0
        if update and existing:
            # One salted hash per station; bulk_update keeps it to a few statements for a whole fleet.
            rows = list(Station.objects.filter(station_id__in=existing))
            for row in rows:
                row.set_password(password)
                row.boot_status = boot_status
            updated = Station.objects.bulk_update(rows, ["password_hash", "boot_status"], batch_size=1000)
    return len(new), updated


def id_token_add(*, token: str, type: str, status: str, group: str | None = None) -> IdToken:
    """Create or update an identity token; ``group`` names an existing or new group token of the same type."""
    group_row = None
    if group:
        group_row, _ = IdToken.objects.get_or_create(id_token=group, type=type)
    row, _ = IdToken.objects.update_or_create(
        id_token=token, type=type, defaults={"status": status, "group": group_row}
    )
    return row


# --------------------------------------------------------------------------------------------------------------
# Commands to stations
# --------------------------------------------------------------------------------------------------------------


class StationCallError(Exception):
    """Base of the errors ``station_call`` raises."""


class StationUnknown(StationCallError):
    pass


class StationOffline(StationCallError):
    pass


class CallTimeout(StationCallError):
    pass


class CallPayloadInvalid(StationCallError):
    """The request was not sent: it does not match the action's schema (or the action is not a CSMS action)."""


class CallErrorResponse(StationCallError):
    """The station answered with a CALLERROR (or with a CALLRESULT that breaks the response schema)."""

    def __init__(self, code: str, description: str, details: Any = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


def station_call(
    *, station_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """Send a CSMS-initiated ``action`` to a station, wherever its socket is; returns the CALLRESULT payload.

    Raises StationUnknown, StationOffline, CallPayloadInvalid (nothing sent), CallTimeout or CallErrorResponse.
    """
    return async_to_sync(station_call_async)(station_id=station_id, action=action, payload=payload, timeout=timeout)


async def station_call_async(
    *,
    station_id: str,
    action: str,
    payload: dict[str, Any],
    timeout: float | None = None,  # noqa: ASYNC109
) -> dict[str, Any]:
    """The async twin of ``station_call``, for consumers and async views."""
    timeout = float(timeout if timeout is not None else settings.OCPP_CALL_TIMEOUT)
    row = await _station_route(station_id)
    if row is None:
        raise StationUnknown(f"no station {station_id!r}")
    version, channel = row
    if not channel:
        raise StationOffline(f"station {station_id!r} is not connected")
    version = version or "2.0.1"
    if not ocpp_j.is_csms_action(version, action):
        raise CallPayloadInvalid(f"{action!r} is not a CSMS-initiated action of OCPP {version}")
    try:
        ocpp_j.check(ocpp_j.request_validator(version, action), payload)
    except OcppError as exc:
        raise CallPayloadInvalid(f"{action}: {exc.description}") from exc
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS must be configured"
    reply_channel = await layer.new_channel()
    deadline = time.time() + timeout
    await layer.send(
        channel,
        {"type": "ocpp.call", "action": action, "payload": payload, "reply_to": reply_channel, "deadline": deadline},
    )
    reply = await _await_reply(
        layer, reply_channel, station_id=station_id, action=action, channel=channel, timeout=timeout
    )
    return _reply_unpack(station_id, action, reply)


#: How often a caller waiting for an answer checks that the socket it sent to is still the station's.
ROUTE_RECHECK_S = 1.0


async def _await_reply(
    layer: Any,
    reply_channel: str,
    *,
    station_id: str,
    action: str,
    channel: str,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Wait for the consumer's reply; fail fast with StationOffline if the socket went away meanwhile.

    A call sent to a consumer that is closing sits unread in its channel (the consumer can only answer "offline"
    for calls it has already taken). Rather than hold the caller for the whole timeout, re-read the station's route
    every ``ROUTE_RECHECK_S``: once the station's channel is gone or belongs to a newer connection, the call was never
    delivered and the caller learns so within a second.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    receive = asyncio.ensure_future(layer.receive(reply_channel))
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CallTimeout(f"{station_id} did not answer {action} within {timeout:g} s")
            done, _ = await asyncio.wait({receive}, timeout=min(ROUTE_RECHECK_S, remaining))
            if done:
                return dict(receive.result())
            route = await _station_route(station_id)
            if route is None or route[1] != channel:
                raise StationOffline(f"station {station_id!r} disconnected before answering {action}")
    finally:
        if not receive.done():
            receive.cancel()


def _reply_unpack(station_id: str, action: str, reply: dict[str, Any]) -> dict[str, Any]:
    status = reply.get("status")
    if status == "result":
        return dict(reply["payload"])
    if status == "offline":
        raise StationOffline(f"station {station_id!r} disconnected before answering {action}")
    if status == "timeout":
        raise CallTimeout(f"{station_id} did not answer {action} in time")
    raise CallErrorResponse(reply.get("code", "InternalError"), reply.get("description", ""), reply.get("details"))


@database_sync_to_async
def _station_route(station_id: str) -> tuple[str, str] | None:
    return Station.objects.filter(station_id=station_id).values_list("ocpp_version", "channel_name").first()


def charging_profile_set(
    *, station_id: str, evse_id: int, profile: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """SetChargingProfile (incl. 2.1 V2X operation modes) and record the profile with the station's answer."""
    response = station_call(
        station_id=station_id,
        action="SetChargingProfile",
        payload={"evseId": evse_id, "chargingProfile": profile},
        timeout=timeout,
    )
    ChargingProfile.objects.create(
        station=Station.objects.get(station_id=station_id),
        evse_id=evse_id,
        profile_id=profile["id"],
        stack_level=profile["stackLevel"],
        purpose=profile["chargingProfilePurpose"],
        kind=profile["chargingProfileKind"],
        source=ProfileSource.CSMS,
        status=response.get("status", ""),
        active=response.get("status") == "Accepted",
        payload=profile,
        recorded_at=datetime.now(UTC),
    )
    return response


def der_control_set(*, station_id: str, control: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """SetDERControl (OCPP 2.1) and record the control with the station's answer."""
    response = station_call(station_id=station_id, action="SetDERControl", payload=control, timeout=timeout)
    DerControl.objects.create(
        station=Station.objects.get(station_id=station_id),
        control_id=control["controlId"],
        control_type=control["controlType"],
        is_default=control["isDefault"],
        source=ProfileSource.CSMS,
        status=response.get("status", ""),
        payload=control,
        recorded_at=datetime.now(UTC),
    )
    return response
