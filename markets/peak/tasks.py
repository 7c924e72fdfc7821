"""Celery for peak shaving: site-meter readings from the CSMS's telemetry, the rolling forecast and plan, and the
settlement of billing periods that are over. Each is idempotent; beat runs the periodic ones."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.db import DatabaseError
from django.utils import timezone

from markets.models import DepotSite
from markets.peak.selectors import tariff_in_force
from markets.peak.services import (
    PeakError,
    peak_period_settle,
    peak_plan_make,
    site_load_forecast_make,
    site_meter_telemetry_ingest,
)

LOG = logging.getLogger(__name__)
INGEST_SITE_METER = "markets.peak.tasks.site_meter_ingest"
PLAN_HORIZON = timedelta(hours=24)

BEAT_SCHEDULE = {
    "markets-peak-plan": {"task": "markets.peak.tasks.peak_plans_refresh", "schedule": 900.0},
    "markets-peak-settle": {"task": "markets.peak.tasks.peak_periods_settle", "schedule": 3600.0},
}


@shared_task(
    name=INGEST_SITE_METER, autoretry_for=(DatabaseError,), retry_backoff=True, retry_backoff_max=300, max_retries=12
)
def site_meter_ingest(readings: list[dict[str, Any]]) -> int:
    """Store site-meter samples; a database outage is retried with backoff (about an hour in all), harmless since
    a sample already stored with the same value is not stored again."""
    return site_meter_telemetry_ingest(readings=readings)


@shared_task
def peak_plans_refresh() -> list[int]:
    """Every 15 min, for each site with a tariff and stations: forecast the next 24 h and plan them with the cars
    plugged in now (the newest plan is the one dispatch follows)."""
    now = timezone.now()
    start = now.replace(second=0, microsecond=0)
    planned = []
    for site in DepotSite.objects.filter(tariffs__isnull=False, stations__isnull=False).distinct():
        found = tariff_in_force(site=site, at=now)
        if found is None:
            continue
        step = found[1].interval_minutes
        aligned = start - timedelta(minutes=start.minute % step)
        try:
            if site_load_forecast_make(site_id=site.pk, start=aligned, end=aligned + PLAN_HORIZON, now=now) == 0:
                LOG.info("site %s: no metered history to forecast from yet; not planned", site.code)
                continue
            planned.append(peak_plan_make(site_id=site.pk, start=aligned, end=aligned + PLAN_HORIZON, now=now).pk)
        except PeakError as exc:
            LOG.warning("site %s: %s", site.code, exc)
        except Exception:  # one site's fault (its data, a failed query) must not leave every other site unplanned
            LOG.exception("site %s: planning failed; the other sites are planned, this one again in 15 min", site.code)
    return planned


@shared_task
def peak_periods_settle() -> list[int]:
    """Settle each site's last billing period once it is over and a day of late interval data has had time to come."""
    now = timezone.now()
    settled = []
    for site in DepotSite.objects.filter(tariffs__isnull=False).distinct():
        found = tariff_in_force(site=site, at=now - timedelta(days=1))
        if found is None:
            continue
        current_start, _ = found[1].billing_period(now - timedelta(days=1))
        previous = current_start - timedelta(days=1)
        try:
            settled.append(peak_period_settle(site_id=site.pk, period_start=previous, now=now).pk)
        except PeakError as exc:
            LOG.info("site %s: %s", site.code, exc)
        except Exception:  # as above: the next run (hourly) tries this site again, the others are settled now
            LOG.exception("site %s: settling the billing period failed; retried at the next run", site.code)
    return settled
