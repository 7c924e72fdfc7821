"""The group-commit writer's batch function: apply a batch of jobs in one transaction, one outcome per job.

Station-initiated CALLs go to their action's handler (``chargers.handlers.registry.HANDLERS``, one dict lookup),
SENDs and frames recorded as they are go to the message log, and connections and disconnections claim and release
the station: in memory, against the batch's station rows loaded under their locks (``chargers.batch.stations_load``),
written once per batch at ``BatchContext.flush`` (a reconnect storm's claims were two round trips per station).
Answers are released only after COMMIT (``chargers.writer``), committed telemetry a little later
(``chargers.telemetry.telemetry_committed`` through ``after_batch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from chargers import ocpp_j
from chargers.batch import (
    ANSWERED_FRESH,
    BatchContext,
    answered_load,
    call_digest,
    connectors_load,
    stations_load,
    transactions_load,
)
from chargers.handlers.registry import HANDLERS, log_only
from chargers.jobs import CallOutcome, Connected, Disconnected, IncomingCall, IncomingSend, Job, LogEntry
from chargers.models import Direction, StationEventKind
from chargers.ocpp_j import OcppError
from chargers.services.station_commands import SECRET_ACTIONS, payload_masked
from chargers.telemetry import TelemetryUpdate, telemetry_committed
from chargers.writer import after_batch


def batch_apply(jobs: Sequence[Job]) -> list[Any]:
    """Apply ``jobs`` in one transaction; returns one outcome per job. Called by the writer thread only."""
    ctx = BatchContext(datetime.now(UTC))
    with transaction.atomic():
        calls = [j for j in jobs if isinstance(j, IncomingCall)]
        stations_load(ctx, {j.station.pk for j in jobs if isinstance(j, IncomingCall | Connected | Disconnected)})
        answered_load(ctx, calls)
        transactions_load(ctx, [c for c in calls if c.action == "TransactionEvent"])
        connectors_load(ctx, [c for c in calls if c.action == "StatusNotification"])
        outcomes = [_apply_job(ctx, job) for job in jobs]
        ctx.flush()
    if ctx.telemetry:
        after_batch(_telemetry_released, ctx.telemetry)
    return outcomes


def _telemetry_released(updates: list[TelemetryUpdate]) -> None:
    telemetry_committed(updates=updates)


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
        # The actions whose requests carry secrets (a rotated BasicAuthPassword, a network profile's) are logged
        # masked, as in the StationCommand audit; the others are not walked (a dispatch logs a thousand calls).
        secret = job.direction == Direction.OUT and job.action in SECRET_ACTIONS
        ctx.log(
            job.station,
            job.direction,
            job.message_type,
            message_id=job.message_id,
            action=job.action,
            payload=payload_masked(job.payload) if secret else job.payload,
            raw=job.raw,
            response=job.response,
            error_code=job.error_code,
            error_description=job.error_description,
            created_at=job.created_at,
            responded_at=job.responded_at,
        )
        return None
    if isinstance(job, Connected):
        return station_connected(ctx, job)
    return station_disconnected(ctx, job)


def _apply_call(ctx: BatchContext, job: IncomingCall) -> CallOutcome:
    digest = call_digest(ctx, job)
    key = (job.station.pk, job.message_id, digest)
    known = None if job.action in ANSWERED_FRESH else ctx.answered.get(key)
    if known is not None:
        return CallOutcome(known.payload, known.error_code, known.error_description, retransmit=True)
    handler = HANDLERS.get(job.action, log_only)
    ctx.looked_up = job.looked_up
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
        payload_sha256=digest,
        checked=True,  # storable: chargers.handlers.storable checked it at the door
    )
    ctx.touched.add(job.station.pk)
    return outcome


# Connection lifecycle: the writer claims a station for the newest socket and releases it only from that socket. The
# jobs of a batch run in order against ctx.stations (loaded under the rows' locks), so a station connected and
# disconnected, or connected twice, in one batch ends as it would one job at a time; flush writes the last values.


def station_connected(ctx: BatchContext, job: Connected) -> str:
    """Claim the station for ``job.channel_name``; returns the channel of a connection it replaces ("" if none)."""
    row = ctx.stations.get(job.station.pk)  # None: the station was deleted meanwhile, nothing to claim
    previous = row.channel_name if row is not None else ""
    if row is not None:
        row.channel_name = job.channel_name
        ctx.station_change(
            job.station.pk,
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


def station_disconnected(ctx: BatchContext, job: Disconnected) -> bool:
    """Mark offline only if this connection still owns the station (a replaced socket must not)."""
    row = ctx.stations.get(job.station.pk)
    released = row is not None and row.channel_name == job.channel_name
    if row is not None and released:
        row.channel_name = ""
        ctx.station_change(job.station.pk, channel_name="", online=False)
        ctx.event(job.station, StationEventKind.DISCONNECTED, at=job.at, summary=f"close code {job.code}")
        ctx.telemetry.append(TelemetryUpdate(job.station.station_id, "connection", job.at, status="offline"))
    return released
