"""Celery: prepare tomorrow's bid proposals before each operator's gate closure.

``prepare_proposals`` (beat, every 15 min) creates the proposal row for each active operator's next delivery day
once its gate closure is less than ``PREPARE_LEAD`` away, and enqueues ``run_proposal`` after the row commits.
``run_proposal`` claims the row (pending -> running, atomic), so duplicates and retries never run it twice.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from markets.models import BidProposal, MarketOperator
from markets.services.bids import gate_closure
from markets.services.proposals import delivery_window, proposal_claim, proposal_request, proposal_run

PREPARE_LEAD = timedelta(hours=6)

BEAT_SCHEDULE = {
    "markets-prepare-proposals": {"task": "markets.tasks.prepare_proposals", "schedule": 900.0},
}


@shared_task
def prepare_proposals(portfolio: str = "all") -> list[int]:
    now = timezone.now()
    queued = []
    for operator in MarketOperator.objects.filter(active=True):
        day, closes = _next_open_gate(operator, now)
        if not (closes - PREPARE_LEAD <= now < closes):
            continue
        with transaction.atomic():
            proposal, _ = proposal_request(operator=operator, portfolio=portfolio, day=day)
            if proposal.status == BidProposal.Status.PENDING:
                transaction.on_commit(partial(run_proposal.delay, proposal.id))
                queued.append(proposal.id)
    return queued


def _next_open_gate(operator: MarketOperator, now: datetime) -> tuple[date, datetime]:
    """The next delivery day (operator's local date) whose gate has not closed, and its gate closure.

    Tomorrow's, or once that gate has closed (e.g. after 10:30 in New York for PJM's day-ahead) the day after's.
    """
    today = now.astimezone(ZoneInfo(operator.timezone)).date()
    for ahead in (1, 2):
        day = today + timedelta(days=ahead)
        closes = gate_closure(operator, delivery_window(operator, day)[0])
        if now < closes:
            break
    return day, closes


@shared_task
def run_proposal(proposal_id: int) -> str:
    if not proposal_claim(proposal_id=proposal_id):
        return "already claimed"
    return proposal_run(proposal_id=proposal_id).status


# Regulation scoring and settlement (markets/regulation/tasks.py): registered by importing it here.
from markets.regulation.tasks import BEAT_SCHEDULE as _REGULATION_BEAT  # noqa: E402
from markets.regulation.tasks import regulation_settle_hour  # noqa: E402, F401

BEAT_SCHEDULE.update(_REGULATION_BEAT)

from markets.peak.tasks import BEAT_SCHEDULE as _PEAK_BEAT  # noqa: E402
from markets.peak.tasks import peak_periods_settle, peak_plans_refresh, site_meter_ingest  # noqa: E402, F401

BEAT_SCHEDULE.update(_PEAK_BEAT)
