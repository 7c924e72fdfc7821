"""Firmware management (OCPP block L) and diagnostics (block N).

FirmwareStatusNotification, LogStatusNotification and NotifyEvent are recorded as station events; an OCPP 2.1
periodic event stream is accepted, and its frames are kept in the message log.
"""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_parse, event_handler
from chargers.jobs import StationRef
from chargers.models import StationEventKind

firmware_status_record = event_handler(StationEventKind.FIRMWARE_STATUS, "status")
log_status_record = event_handler(StationEventKind.LOG_STATUS, "status")


def monitoring_events_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    for item in payload["eventData"]:
        ctx.event(
            station,
            StationEventKind.NOTIFY_EVENT,
            at=datetime_parse(item["timestamp"], ctx.now),
            summary=f"{item['component']['name']}.{item['variable']['name']}={item['actualValue']} ({item['trigger']})",
            **item,
        )
    return {}


def periodic_event_stream_accept(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # The stream's NotifyPeriodicEventStream SENDs are kept in the message log like every other frame.
    return {"status": "Accepted"}
