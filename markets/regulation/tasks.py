"""Celery task for regulation: score and settle each hour once it is due. Registered through ``markets/tasks.py``
(which imports it and merges :data:`BEAT_SCHEDULE`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.utils import timezone

from markets.regulation import scoring
from markets.regulation.selectors import awards_in_force
from markets.regulation.services import RegulationError
from markets.regulation.settlement import SettlementError
from markets.regulation.settling import settlement_compute

LOG = logging.getLogger(__name__)

# An hour can be scored once its 31 look-ahead rows (5 min 10 s) are in, plus a margin for late meter values.
SETTLE_AFTER = timedelta(seconds=scoring.LOOKAHEAD_ROWS * scoring.SAMPLE_PERIOD_S + 120)


def hour_due(now: datetime) -> datetime:
    """Start of the latest hour whose scoring look-ahead (and margin) has passed."""
    ready = now - timedelta(hours=1) - SETTLE_AFTER
    return ready.replace(minute=0, second=0, microsecond=0)


@shared_task(name="markets.regulation_settle_hour", ignore_result=True)
def regulation_settle_hour(period_start: str | None = None) -> dict[str, int]:
    """Score and settle every award in force in one hour (default: the latest hour due). Idempotent: settled
    awards are returned as stored; an award whose inputs are missing (prices, signal) is logged and retried on the
    next run, nothing half-written."""
    start = datetime.fromisoformat(period_start).astimezone(UTC) if period_start else hour_due(timezone.now())
    done = failed = 0
    for award in awards_in_force(at=start):
        try:
            settlement_compute(award=award, period_start=start)
            done += 1
        except (RegulationError, SettlementError) as exc:
            failed += 1
            LOG.warning("award %s hour %s not settled: %s", award.pk, start.isoformat(), exc)
    return {"settled": done, "failed": failed}


BEAT_SCHEDULE = {
    "markets-regulation-settle": {"task": "markets.regulation_settle_hour", "schedule": 300.0},
}
