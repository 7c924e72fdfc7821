"""Stations that went silent: the heartbeat-timeout sweep (``chargers.tasks.station_heartbeat_sweep``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction

from chargers.models import Station, StationEvent, StationEventKind
from chargers.telemetry import TelemetryUpdate, telemetry_committed


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
