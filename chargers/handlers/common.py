"""What every handler shares: its signature, OCPP date-times, and handlers that only record a station event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chargers.batch import BatchContext
from chargers.jobs import StationRef
from chargers.ocpp_j import OcppError

#: A station-initiated action's handler: one validated request payload in, the CALLRESULT payload out (or
#: OcppError for a CALLERROR). Rows go into the batch context, written in bulk before COMMIT.
Handler = Callable[[BatchContext, StationRef, dict[str, Any]], dict[str, Any]]


def datetime_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def datetime_parse(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise OcppError("PropertyConstraintViolation", f"not an ISO 8601 date-time: {value!r}") from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        # In UTC, as it is stored: an offset that moves it past year 9999 or before year 1 is refused here, not by
        # the database adapter in the middle of a batch.
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise OcppError("PropertyConstraintViolation", f"date-time out of range in UTC: {value!r}") from exc


def event_handler(kind: str, summary_key: str, response: dict[str, Any] | None = None) -> Handler:
    def handle(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
        ctx.event(station, kind, summary=str(payload.get(summary_key, "")), **payload)
        return dict(response or {})

    return handle
