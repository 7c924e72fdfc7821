"""Optimiser proposals: one ``BidProposal`` per operator, portfolio and delivery day, claimed by one worker, run,
and written as draft bids (bids someone touched are left alone)."""

from __future__ import annotations

import logging
import time as _time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from markets.models import Bid, BidEvent, BidProposal, MarketOperator, Product
from markets.services.bids import Actor, MarketError, bid_event_record, gate_closure, validate_price

logger = logging.getLogger(__name__)
S = Bid.Status


def delivery_window(operator: MarketOperator, day: date) -> tuple[datetime, datetime]:
    """The operator's delivery day ``day`` (local midnight to midnight) in UTC."""
    tz = ZoneInfo(operator.timezone)
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def proposal_request(*, operator: MarketOperator, portfolio: str, day: date) -> tuple[BidProposal, bool]:
    """The proposal row for ``operator``/``portfolio``/delivery ``day``, created pending if missing."""
    start, end = delivery_window(operator, day)
    return BidProposal.objects.get_or_create(
        operator=operator,
        portfolio=portfolio,
        horizon_start=start,
        defaults={"horizon_end": end, "gate_closure": gate_closure(operator, start)},
    )


def proposal_prepare(*, operator: MarketOperator, portfolio: str, day: date, now: datetime) -> BidProposal:
    """Ask for a (fresh) proposal for delivery ``day`` from a person (the bidding page): the row, pending, for the
    caller to run. Refused (``MarketError``, with the reason) once the day's intervals have begun or its day-ahead
    gate has closed: bids made then could never be submitted. The scheduler (``markets.tasks``) and the command keep
    calling :func:`proposal_request`."""
    start, end = delivery_window(operator, day)
    if now >= start:
        what = "is over" if now >= end else "has begun"
        raise MarketError(
            f"delivery day {day:%Y-%m-%d} {what} (its intervals start {start:%Y-%m-%d %H:%M} UTC): "
            "no bids can be proposed for past intervals"
        )
    closes = gate_closure(operator, start)
    if now >= closes:
        local = closes.astimezone(ZoneInfo(operator.timezone))
        raise MarketError(
            f"the day-ahead gate for {day:%Y-%m-%d} closed at {closes:%Y-%m-%d %H:%M} UTC "
            f"({local:%H:%M} {operator.timezone}): no new proposal for that day"
        )
    proposal, created = proposal_request(operator=operator, portfolio=portfolio, day=day)
    if not created and proposal.status == BidProposal.Status.RUNNING:
        raise MarketError(f"the proposal for {day:%Y-%m-%d} ({portfolio}) is being computed; reload in a moment")
    proposal_rerun(proposal_id=proposal.pk)
    proposal.refresh_from_db()
    return proposal


def proposal_claim(*, proposal_id: int) -> bool:
    """Claim a pending proposal for running (atomic; False if another worker has it or it is done)."""
    return (
        BidProposal.objects.filter(pk=proposal_id, status=BidProposal.Status.PENDING).update(
            status=BidProposal.Status.RUNNING
        )
        == 1
    )


def proposal_rerun(*, proposal_id: int) -> bool:
    """Send a done / failed proposal back to pending so the next run recomputes it (draft bids are replaced)."""
    return (
        BidProposal.objects.filter(
            pk=proposal_id, status__in=[BidProposal.Status.DONE, BidProposal.Status.FAILED]
        ).update(status=BidProposal.Status.PENDING)
        == 1
    )


def proposal_run(*, proposal_id: int, scheduler: str = "highs", now: datetime | None = None) -> BidProposal:
    """Run a claimed proposal: build the problem from the portfolio's plugged-in vehicles and the newest price
    beliefs, optimise, and write the bids as drafts (replacing earlier drafts for the window; bids already approved
    or further along are left alone). Failures are recorded on the proposal, never half-written bids."""
    from markets.planning import build_problem, schedule_for  # here: it loads the solvers (numpy, scipy, HiGHS)

    proposal = BidProposal.objects.select_related("operator").get(pk=proposal_id)
    if proposal.status != BidProposal.Status.RUNNING:
        raise MarketError(f"proposal {proposal_id} is {proposal.status}; claim it first")
    started = _time.perf_counter()
    try:
        problem, context = build_problem(proposal=proposal, now=now or timezone.now())
        schedule = schedule_for(problem, scheduler=scheduler)
        with transaction.atomic():
            _write_bids(proposal, problem, schedule, context)
            BidProposal.objects.filter(pk=proposal_id).update(
                status=BidProposal.Status.DONE,
                scheduler=schedule.scheduler,
                objective=Decimal(str(round(schedule.objective_usd, 4))),
                solve_ms=int((_time.perf_counter() - started) * 1000),
                vehicles=len(problem.vehicles),
                clusters=schedule.clusters,
                inputs=context["inputs"]
                | {"envelope": schedule.envelope, "expected_wear_usd": str(schedule.expected_wear_usd)},
                explanation=context["explanation"](schedule),
                finished_at=timezone.now(),
                error="",
            )
    except Exception as exc:
        logger.exception("proposal %s failed", proposal_id)
        BidProposal.objects.filter(pk=proposal_id).update(
            status=BidProposal.Status.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
    return BidProposal.objects.get(pk=proposal_id)


def _write_bids(proposal: BidProposal, problem: Any, schedule: Any, context: dict[str, Any]) -> None:
    """Upsert drafts: a bid nobody has touched is re-proposed in place; edited or advanced bids are left alone."""
    products: dict[str, Product] = context["products"]
    who = Actor(label="system:optimiser")
    touched = set(
        BidEvent.objects.filter(
            bid__portfolio=proposal.portfolio,
            bid__interval_start__gte=proposal.horizon_start,
            bid__interval_start__lt=proposal.horizon_end,
        )
        .exclude(action="propose")
        .values_list("bid_id", flat=True)
    )
    existing = {
        (b.product_id, b.interval_start): b
        for b in Bid.objects.filter(
            product__in=products.values(),
            portfolio=proposal.portfolio,
            interval_start__gte=proposal.horizon_start,
            interval_start__lt=proposal.horizon_end,
        )
    }
    proposed: set[tuple[int, datetime]] = set()
    for pb in schedule.bids:
        product = products[pb.product]
        operator = product.operator
        qty = pb.quantity_w
        if qty < operator.min_bid_w or qty % operator.bid_increment_w:
            raise MarketError(f"optimiser produced {qty} W for {product}, not a valid bid size")
        price = validate_price(operator, Decimal(str(round(pb.price, 4))))
        forecast = None if pb.forecast_price is None else Decimal(str(round(pb.forecast_price, 4)))
        key = (product.id, pb.start)
        proposed.add(key)
        bid = existing.get(key)
        if bid is None:
            bid = Bid.objects.create(
                product=product,
                proposal=proposal,
                portfolio=proposal.portfolio,
                interval_start=pb.start,
                interval_end=pb.end,
                quantity_w=qty,
                price=price,
                proposed_quantity_w=qty,
                proposed_price=price,
                forecast_price=forecast,
                external_ref=_new_ref(),
            )
            bid_event_record(bid.id, who, "propose", after=S.DRAFT, quantity_w=qty, price=price)
        elif bid.status == S.DRAFT and bid.id not in touched:
            _repropose(bid, proposal, qty, price, forecast, who)
    for key, bid in existing.items():
        if key not in proposed and bid.status == S.DRAFT and bid.id not in touched and bid.quantity_w:
            _repropose(bid, proposal, 0, bid.price, bid.forecast_price, who)


def _repropose(bid: Bid, proposal: BidProposal, qty: int, price: Decimal, forecast: Decimal | None, who: Actor) -> None:
    updated = Bid.objects.filter(pk=bid.pk, status=S.DRAFT, version=bid.version).update(
        proposal=proposal,
        quantity_w=qty,
        price=price,
        proposed_quantity_w=qty,
        proposed_price=price,
        forecast_price=forecast,
        version=F("version") + 1,
        updated_at=timezone.now(),
    )
    if updated:
        bid_event_record(bid.id, who, "propose", before=S.DRAFT, after=S.DRAFT, quantity_w=qty, price=price)


def _new_ref() -> str:
    return f"B{uuid.uuid4().hex[:12].upper()}"
