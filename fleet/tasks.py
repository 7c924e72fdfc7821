"""Celery tasks of the fleet app. Enqueued on commit, by name, through ``fleet.jobs``; never polling."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.utils import timezone

from fleet import jobs, telemetry
from fleet.services import alerts, vehicles


@shared_task(name=jobs.REFRESH_VEHICLE_STATE, ignore_result=True)
def refresh_vehicle_state(vehicle_id: int) -> bool:
    """Refresh one vehicle's derived state if a refresh is pending; returns whether this call did the work.

    Loads by id, claims the request with an atomic update, so a burst of telemetry or a redelivered message
    costs one recomputation, not one per message.
    """
    if not vehicles.vehicle_state_claim(vehicle_id=vehicle_id):
        return False
    vehicles.vehicle_state_refresh(vehicle_id=vehicle_id)
    return True


@shared_task(name=jobs.INGEST_TELEMETRY, ignore_result=True)
def ingest_telemetry(readings: list[dict[str, Any]]) -> int:
    """Apply committed CSMS readings to vehicles (sessions, SoC beliefs, ISO 15118 needs); idempotent."""
    return telemetry.telemetry_ingest(readings=[telemetry.Reading.from_message(r) for r in readings])


@shared_task(name="fleet.alerts_sync", ignore_result=True)
def alerts_sync() -> dict[str, int]:
    """Raise new alert conditions and clear those gone (each once: ``fleet.services.alerts``)."""
    result = alerts.alerts_sync(now=timezone.now())
    return {"raised": result.raised, "cleared": result.cleared, "open": result.open}


BEAT_SCHEDULE = {
    "fleet-alerts-sync": {"task": "fleet.alerts_sync", "schedule": 20.0},
}
