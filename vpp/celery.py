"""The Celery app. Broker is Redis when REDIS_URL is set; otherwise tasks run eagerly in the caller.

Each Django app may define ``BEAT_SCHEDULE`` in its ``tasks`` module; they are merged here so one beat
process schedules the whole project.
"""

from __future__ import annotations

import os

from celery import Celery

from vpp.discovery import app_modules

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")

app = Celery("vpp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _merge_beat_schedules(sender: Celery, **_: object) -> None:
    for module in app_modules("tasks"):
        sender.conf.beat_schedule.update(getattr(module, "BEAT_SCHEDULE", {}))
