"""Celery task for regulation: score and settle each settlement period once it is due. Registered through
``markets/tasks.py`` (which imports it and merges :data:`BEAT_SCHEDULE`).

Periods are the products' own (:func:`~markets.regulation.settling.settlement_periods`: PJM's hour by default, the
demo operator's quarter-hour). The beat runs every minute, so a period is settled within a minute of falling due.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.utils import timezone

from markets.models import Award
from markets.regulation import scoring
from markets.regulation.models import Settlement
from markets.regulation.services import RegulationError
from markets.regulation.settlement import SettlementError
from markets.regulation.settling import settlement_compute, settlement_periods_between
from markets.reserve.services import reserve_events_measure_due

LOG = logging.getLogger(__name__)

# A period can be scored once its 31 look-ahead rows (5 min 10 s) are in, plus a margin for late meter values.
SETTLE_AFTER = timedelta(seconds=scoring.LOOKAHEAD_ROWS * scoring.SAMPLE_PERIOD_S + 120)
#: A period that cannot be settled (a price or the signal missing) is retried on every run for this long after it
#: falls due, then left alone (``regulation_settle_hour <start>`` settles it by hand once its inputs are in).
RETRY_FOR = timedelta(hours=3)
#: (award, period start) already reported as unsettleable by this process: reported once, not on every run.
_REPORTED: set[tuple[int, datetime]] = set()


def hour_due(now: datetime) -> datetime:
    """Start of the latest hour whose scoring look-ahead (and margin) has passed."""
    ready = now - timedelta(hours=1) - SETTLE_AFTER
    return ready.replace(minute=0, second=0, microsecond=0)


def _settle(periods: list[tuple[Award, datetime, datetime]], *, skip_stored: bool) -> dict[str, int]:
    done = failed = 0
    stored: set[tuple[int, datetime]] = set()
    if skip_stored and periods:
        stored = set(
            Settlement.objects.filter(award_id__in={a.pk for a, _, _ in periods}).values_list(
                "award_id", "period_start"
            )
        )
    for award, start, _ in periods:
        if (award.pk, start) in stored:
            done += 1
            continue
        try:
            settlement_compute(award=award, period_start=start)
            done += 1
        except (RegulationError, SettlementError) as exc:
            failed += 1
            key = (award.pk, start)
            if key not in _REPORTED:
                _REPORTED.add(key)
                LOG.warning(
                    "award %s period %s not settled (retried every run until %s, reported once): %s",
                    award.pk,
                    start.isoformat(),
                    (start + RETRY_FOR).isoformat(),
                    exc,
                )
    return {"settled": done, "failed": failed}


@shared_task(name="markets.regulation_settle_hour", ignore_result=True)
def regulation_settle_hour(period_start: str | None = None, now: str | None = None) -> dict[str, int]:
    """Score and settle settlement periods. With ``period_start``: every period that starts in that hour. Without:
    every period that is due (its look-ahead and margin passed) and fell due less than :data:`RETRY_FOR` ago.

    Idempotent: settled periods are kept as stored; a period whose inputs are missing (prices, signal) is logged
    once and retried on the next runs, nothing half-written. ``now`` (ISO 8601) stands in for the clock.
    """
    if period_start:
        start = datetime.fromisoformat(period_start).astimezone(UTC)
        try:
            periods = settlement_periods_between(start=start, end=start + timedelta(hours=1))
        except SettlementError as exc:
            LOG.warning("settlement periods from %s: %s", start.isoformat(), exc)
            return {"settled": 0, "failed": 1}
        return _settle(periods, skip_stored=False)
    clock = datetime.fromisoformat(now).astimezone(UTC) if now else timezone.now()
    reserve_events_measure_due(now=clock)  # reserve events first: their award periods carry the penalties
    due_before = clock - SETTLE_AFTER  # a period ending at or before this is due
    try:
        candidates = settlement_periods_between(start=due_before - RETRY_FOR - timedelta(hours=1), end=due_before)
    except SettlementError as exc:
        LOG.warning("settlement periods: %s", exc)
        return {"settled": 0, "failed": 1}
    periods = [(a, s, e) for a, s, e in candidates if due_before - RETRY_FOR < e <= due_before]
    return _settle(periods, skip_stored=True)


BEAT_SCHEDULE = {
    "markets-regulation-settle": {"task": "markets.regulation_settle_hour", "schedule": 60.0},
}
