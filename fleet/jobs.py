"""Enqueue this app's Celery tasks by their registered name, after the current transaction commits.

By name, not by importing ``fleet.tasks``: the tasks call the services that enqueue them, so an import would close a
cycle (services -> tasks -> services). The Celery app imports every app's ``tasks`` module when it finalises
(``vpp.celery``), so the name resolves in the worker, in Daphne and in eager mode alike; an unknown name raises
``KeyError`` at once instead of silently queueing a message nobody consumes.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction

REFRESH_VEHICLE_STATE = "fleet.refresh_vehicle_state"
INGEST_TELEMETRY = "fleet.ingest_telemetry"


def task_enqueue_on_commit(*, name: str, args: tuple[Any, ...] = (), countdown: float | None = None) -> None:
    """Send task ``name`` with ``args`` once the surrounding transaction commits (at once outside one)."""
    task = current_app.tasks[name]
    transaction.on_commit(lambda: task.apply_async(args, countdown=countdown))
