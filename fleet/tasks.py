"""Celery tasks of the fleet app. Enqueued on commit by ``fleet.services.vehicle_request_refresh``; never polling."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from fleet import services


@shared_task(name="fleet.refresh_vehicle_state", ignore_result=True)
def refresh_vehicle_state(vehicle_id: int) -> bool:
    """Refresh one vehicle's derived state if a refresh is pending; returns whether this call did the work.

    Loads by id, claims the request with an atomic update, so a burst of telemetry or a redelivered message
    costs one recomputation, not one per message.
    """
    if not services.vehicle_state_claim(vehicle_id=vehicle_id):
        return False
    services.vehicle_state_refresh(vehicle_id=vehicle_id)
    return True


@shared_task(name="fleet.ingest_telemetry", ignore_result=True)
def ingest_telemetry(readings: list[dict[str, Any]]) -> int:
    """Apply committed CSMS readings to vehicles (sessions, SoC beliefs, ISO 15118 needs); idempotent."""
    from fleet.telemetry import Reading, telemetry_ingest

    return telemetry_ingest(readings=[Reading.from_message(r) for r in readings])
