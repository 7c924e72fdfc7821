"""Availability (OCPP block G): Heartbeat and StatusNotification."""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_iso, datetime_parse
from chargers.jobs import StationRef
from chargers.models import Connector, Evse
from chargers.telemetry import TelemetryUpdate


def heartbeat_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    return {"currentTime": datetime_iso(ctx.now)}


def connector_status_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """StatusNotification: the connector's status, newest station timestamp wins."""
    at = datetime_parse(payload["timestamp"], ctx.now)
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
