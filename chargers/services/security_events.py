"""Security events the CSMS detects (issue 14): failed or refused handshakes, rate limits hit, password rotations,
security-profile violations. Stored for operators (the admin lists them): a ``StationEvent`` when the station id
names a station, else a ``SecurityEvent`` (an unknown id, or an address only).

Callers bound how often they record (chargers.handshake records a key's first failure and the moment it is
blocked, not every attempt), so a flood of failures cannot turn into a flood of writes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.db import DatabaseError
from django.utils import timezone

from chargers.models import SecurityEvent, Station, StationEvent

LOG = logging.getLogger(__name__)


def security_event_record(
    *, kind: str, station_ident: str = "", address: str = "", summary: str, data: dict[str, Any] | None = None
) -> StationEvent | SecurityEvent:
    """Store one security event (``kind``: a StationEventKind) for the station ``station_ident`` or, if there is
    no such station, as a SecurityEvent naming the id and ``address``."""
    now = timezone.now()
    details = {**(data or {}), **({"address": address} if address else {})}
    station = Station.objects.filter(station_id=station_ident).only("pk").first() if station_ident else None
    if station is not None:
        return StationEvent.objects.create(
            station=station, kind=kind, timestamp=now, received_at=now, summary=summary[:255], data=details
        )
    return SecurityEvent.objects.create(
        kind=kind,
        station_ident=station_ident[:48],
        address=address[:64],
        timestamp=now,
        summary=summary[:255],
        data=details,
    )


_record_async = database_sync_to_async(security_event_record)
_tasks: set[asyncio.Task[None]] = set()  # strong references until done (the loop keeps only weak ones)


def security_event_later(
    *, kind: str, station_ident: str = "", address: str = "", summary: str, data: dict[str, Any] | None = None
) -> None:
    """Record from the event loop without waiting: the refusal it documents must not wait on the database."""

    async def record() -> None:
        try:
            await _record_async(kind=kind, station_ident=station_ident, address=address, summary=summary, data=data)
        except DatabaseError:  # the log line the caller wrote stays; an outage is logged by the writer
            LOG.warning("could not store the security event %s for %s: the database is not answering", kind,
                        station_ident or address)  # fmt: skip

    task = asyncio.get_running_loop().create_task(record())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
