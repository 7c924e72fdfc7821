"""Periodic CSMS work."""

from __future__ import annotations

from celery import shared_task

from chargers.services.heartbeat import station_heartbeat_timeouts_mark


@shared_task(name="chargers.station_heartbeat_sweep", ignore_result=True)
def station_heartbeat_sweep() -> int:
    """Mark silent stations offline with a HeartbeatTimeout event (idempotent: each station is claimed once)."""
    return station_heartbeat_timeouts_mark()


BEAT_SCHEDULE = {
    "chargers-heartbeat-sweep": {"task": "chargers.station_heartbeat_sweep", "schedule": 15.0},
}
