"""Availability (OCPP block G): Heartbeat and StatusNotification."""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext, ConnectorState
from chargers.handlers.common import datetime_iso, datetime_parse
from chargers.jobs import StationRef
from chargers.telemetry import TelemetryUpdate


def heartbeat_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    return {"currentTime": datetime_iso(ctx.now)}


def connector_status_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """StatusNotification: the connector's status, newest station timestamp wins.

    Against the batch's connectors (``chargers.batch.connectors_load``), created or updated at flush: a reconnect
    storm reports a thousand connectors in a few batches.
    """
    at = datetime_parse(payload["timestamp"], ctx.now)
    key = (station.pk, payload["evseId"], payload["connectorId"])
    connector = ctx.connectors.get(key)
    if connector is None:  # first reported: created with this status (pk None: inserted at flush)
        ctx.connectors[key] = ConnectorState(None, payload["connectorStatus"], at)
    elif connector.status_at is None or connector.status_at <= at:
        connector.status, connector.status_at = payload["connectorStatus"], at
        connector.changed = connector.pk is not None
    ctx.telemetry.append(
        TelemetryUpdate(station.station_id, "status", at, evse_id=payload["evseId"], status=payload["connectorStatus"])
    )
    return {}
