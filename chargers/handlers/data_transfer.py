"""DataTransfer (OCPP block P): recorded as a station event; no vendor extension is implemented."""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.jobs import StationRef
from chargers.models import StationEventKind


def data_transfer_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.event(station, StationEventKind.DATA_TRANSFER, summary=payload["vendorId"], **payload)
    return {"status": "UnknownVendorId"}  # no vendor extensions are implemented
