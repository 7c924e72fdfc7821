"""The Celery app. Broker is Redis when REDIS_URL is set; otherwise tasks run eagerly in the caller.

Each Django app may define ``BEAT_SCHEDULE`` in its ``tasks`` module; they are merged here so one beat
process schedules the whole project.
"""

from __future__ import annotations

import importlib
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")

app = Celery("vpp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _merge_beat_schedules(sender: Celery, **_: object) -> None:
    from django.conf import settings

    for label in ("chargers", "fleet", "markets", "vpp"):
        if label not in settings.INSTALLED_APPS:
            continue
        try:
            module = importlib.import_module(f"{label}.tasks")
        except ModuleNotFoundError as exc:
            if exc.name != f"{label}.tasks":
                raise
            continue
        sender.conf.beat_schedule.update(getattr(module, "BEAT_SCHEDULE", {}))
