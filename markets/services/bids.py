"""Domain operations of the markets app. Every bid change goes through :func:`bid_transition` or :func:`bid_edit`:
one conditional ``UPDATE ... WHERE status = <expected> [AND version = <seen>]`` whose row count says whether it
happened (no check-then-act), and one ``BidEvent`` audit row in the same transaction.

Lifecycle::

    draft -> approved -> submitted -> awarded | partially_awarded | rejected
    awarded | partially_awarded -> delivered -> settled        (approved -> draft: sent back for changes)

Why one module of ~760 lines: it is the bidding side's whole write path (bid lifecycle, price and site-load
imports, simulated clearing, CSV exchange with markets, proposals), section by section, and every caller reaches it
as ``services.<name>``; splitting it by those sections is its own change (regulation's are in
``markets/regulation/``).
"""

from __future__ import annotations

import csv
import io
import logging
import time as _time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from markets.models import (
    Award,
    Bid,
    BidEvent,
    BidProposal,
    MarketOperator,
    PricePoint,
    Product,
    SiteLoadPoint,
    Source,
)

logger = logging.getLogger(__name__)
S = Bid.Status

TRANSITIONS: dict[str, set[str]] = {
    S.DRAFT: {S.APPROVED},
    S.APPROVED: {S.SUBMITTED, S.DRAFT},
    S.SUBMITTED: {S.AWARDED, S.PARTIALLY_AWARDED, S.REJECTED},
    S.AWARDED: {S.DELIVERED},
    S.PARTIALLY_AWARDED: {S.DELIVERED},
    S.DELIVERED: {S.SETTLED},
    S.REJECTED: set(),
    S.SETTLED: set(),
}
EDITABLE = (S.DRAFT, S.APPROVED)


class MarketError(Exception):
    """A market operation refused, with a reason fit for the user (HTTP 400/409)."""


class StaleBid(MarketError):
    """The bid changed since it was read (status or version): reload and retry."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a user, or an automated component (``system:<name>``)."""

    user: User | None = None
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (self.user.get_username() if self.user is not None else "system")


#: What the services accept as "who": an Actor, a signed-in user, or None for the system.
ActorLike = Actor | User | None


def _actor(actor: ActorLike) -> Actor:
    if actor is None:
        return Actor(label="system")
    if isinstance(actor, Actor):
        return actor
    return Actor(user=actor)


def _audit(bid_id: int, actor: Actor, action: str, *, before: str = "", after: str = "", **changes: Any) -> None:
    BidEvent.objects.create(
        bid_id=bid_id,
        at=timezone.now(),
        actor=actor.user if actor.user is not None and actor.user.pk else None,
        actor_label=actor.name,
        action=action,
        from_status=before,
        to_status=after,
        changes={k: str(v) for k, v in changes.items() if k != "note"},
        note=str(changes.get("note", ""))[:500],
    )


# --- Lifecycle -----------------------------------------------------------------------------------------------------


def bid_transition(*, bid_id: int, to_status: str, actor: ActorLike, note: str = "", version: int | None = None) -> Bid:
    """Move one bid to ``to_status`` if the lifecycle allows it from its current status; atomic and audited.

    ``version``: the version the caller saw (pages pass it so a stale click is refused). Raises ``StaleBid`` when
    someone else changed the bid first, ``MarketError`` when the transition is not allowed.
    """
    who = _actor(actor)
    sources = [s for s, targets in TRANSITIONS.items() if to_status in targets]
    if not sources:
        raise MarketError(f"no transition leads to {to_status!r}")
    with transaction.atomic():
        current = Bid.objects.filter(pk=bid_id).values_list("status", "version").first()
        if current is None:
            raise MarketError(f"bid {bid_id} does not exist")
        status, seen = current
        if status not in sources:
            raise MarketError(f"bid {bid_id} is {status}; it cannot become {to_status}")
        if to_status == S.SUBMITTED:
            _check_gate_open(bid_id)
        query = Bid.objects.filter(pk=bid_id, status=status, version=seen if version is None else version)
        if query.update(status=to_status, version=F("version") + 1, updated_at=timezone.now()) != 1:
            raise StaleBid(f"bid {bid_id} changed meanwhile; reload it")
        _audit(bid_id, who, "transition", before=status, after=to_status, note=note)
    return Bid.objects.get(pk=bid_id)


def bid_edit(
    *,
    bid_id: int,
    quantity_w: int,
    price: Decimal,
    version: int,
    actor: ActorLike,
    note: str = "",
) -> Bid:
    """Change a draft or approved bid's quantity and price (an approved bid goes back to draft); audited.

    Refuses quantities that break the operator's minimum size or increment (0 withdraws the bid), negative prices,
    and edits made on a stale version.
    """
    who = _actor(actor)
    bid = Bid.objects.select_related("product__operator").get(pk=bid_id)
    validate_quantity(bid.product.operator, quantity_w)
    price = validate_price(bid.product.operator, price)
    with transaction.atomic():
        before = Bid.objects.filter(pk=bid_id).values("status", "quantity_w", "price").first()
        assert before is not None
        updated = Bid.objects.filter(pk=bid_id, status__in=EDITABLE, version=version).update(
            quantity_w=quantity_w, price=price, status=S.DRAFT, version=F("version") + 1, updated_at=timezone.now()
        )
        if updated != 1:
            if before["status"] not in EDITABLE:
                raise MarketError(f"bid {bid_id} is {before['status']}; only draft or approved bids can be edited")
            raise StaleBid(f"bid {bid_id} changed meanwhile; reload it")
        _audit(
            bid_id,
            who,
            "edit",
            before=before["status"],
            after=S.DRAFT,
            quantity_w=f"{before['quantity_w']} -> {quantity_w}",
            price=f"{before['price']} -> {price}",
            note=note,
        )
    return Bid.objects.get(pk=bid_id)


def bids_transition(*, bid_ids: Iterable[int], to_status: str, actor: ActorLike) -> list[str]:
    """Apply :func:`bid_transition` to several bids; returns the refusals (the others went through)."""
    refused = []
    for bid_id in bid_ids:
        try:
            bid_transition(bid_id=bid_id, to_status=to_status, actor=actor)
        except MarketError as exc:
            refused.append(str(exc))
    return refused


def validate_quantity(operator: MarketOperator, quantity_w: int) -> None:
    if quantity_w < 0:
        raise MarketError("quantity must be >= 0")
    if quantity_w == 0:
        return
    if quantity_w < operator.min_bid_w:
        raise MarketError(f"{quantity_w} W is below {operator.code}'s minimum bid of {operator.min_bid_w} W")
    if quantity_w % operator.bid_increment_w:
        raise MarketError(
            f"{quantity_w} W is not a multiple of {operator.code}'s increment {operator.bid_increment_w} W"
        )


def validate_price(operator: MarketOperator, price: Decimal) -> Decimal:
    if price < 0:
        raise MarketError("price must be >= 0")
    tick = operator.price_tick
    return (price / tick).to_integral_value(rounding=ROUND_CEILING) * tick


def gate_closure(operator: MarketOperator, delivery_start: datetime) -> datetime:
    """Day-ahead gate closure for a delivery starting at ``delivery_start``: ``gate_closure_local`` on the day
    before the delivery day, in the operator's zone."""
    tz = ZoneInfo(operator.timezone)
    day = delivery_start.astimezone(tz).date()
    return datetime.combine(day - timedelta(days=1), operator.gate_closure_local, tzinfo=tz).astimezone(UTC)


def _check_gate_open(bid_id: int) -> None:
    bid = Bid.objects.select_related("product__operator").get(pk=bid_id)
    operator = bid.product.operator
    closes = min(
        gate_closure(operator, bid.interval_start),
        bid.interval_start - timedelta(minutes=operator.intraday_gate_minutes),
    )
    closes = max(closes, bid.interval_start - timedelta(minutes=operator.intraday_gate_minutes))
    if timezone.now() >= closes:
        raise MarketError(f"gate closed at {closes:%Y-%m-%d %H:%M} UTC for bid {bid.external_ref}")


# --- Prices --------------------------------------------------------------------------------------------------------


class CsvImportError(MarketError):
    pass


@dataclass(frozen=True, slots=True)
class ImportResult:
    read: int
    created: int
    skipped_existing: int


def prices_import_pjm_sr(
    *,
    product: Product,
    stream: TextIO,
    source_ref: str,
    subzone: str | None = None,
    belief_time: datetime | None = None,
) -> ImportResult:
    """Import a PJM "Synchronized Reserve Summary" report (two title lines, a header, one row per hour and
    subzone; ``GMT Hour Ending`` as ``MM/DD/YYYY HH``; ``SRMCP ($/MWh)``) as cleared prices.

    Belief time: the report creation timestamp on line 2 (EPT) unless given. All-or-nothing: a bad row stops the
    import with its line number. Re-importing the same file creates nothing new.
    """
    lines = stream.read().splitlines()
    if len(lines) < 4 or "Synchronized Reserve" not in lines[0]:
        raise CsvImportError("not a PJM synchronized reserve summary (first line should name it)")
    if belief_time is None:
        belief_time = _pjm_report_time(lines[1])
    reader = csv.DictReader(lines[2:])
    needed = {"GMT Hour Ending", "SRMCP ($/MWh)", "Subzone"}
    if not needed <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {sorted(needed)}")
    points = []
    for n, row in enumerate(reader, start=4):
        if not row.get("GMT Hour Ending") or row.get("Subzone") is None:
            if row.get("EPT Hour Ending", "").startswith("End of Report"):
                break
            raise CsvImportError(f"line {n}: missing hour or subzone")
        if subzone is not None and row["Subzone"] != subzone:
            continue
        try:
            hour_ending = datetime.strptime(row["GMT Hour Ending"].strip(), "%m/%d/%Y %H").replace(tzinfo=UTC)
            price = Decimal(row["SRMCP ($/MWh)"].strip())
        except (ValueError, InvalidOperation) as exc:
            raise CsvImportError(f"line {n}: {exc}") from None
        points.append(
            PricePoint(
                product=product,
                location=row["Subzone"].strip(),
                interval_start=hour_ending - timedelta(hours=1),
                interval_minutes=60,
                price=price,
                kind=PricePoint.Kind.CLEARED,
                source=Source.CSV,
                source_ref=source_ref,
                belief_time=belief_time,
            )
        )
    return _store_prices(points)


def _pjm_report_time(line: str) -> datetime:
    try:
        stamp = next(cell for cell in next(csv.reader([line])) if "/" in cell and ":" in cell).strip()
        local = datetime.strptime(stamp, "%m/%d/%Y %I:%M:%S %p")
    except (StopIteration, ValueError):
        raise CsvImportError("line 2: no report creation timestamp; pass --belief-time") from None
    return local.replace(tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)


def prices_import_csv(
    *, product: Product, stream: TextIO, source_ref: str, kind: str, belief_time: datetime | None = None
) -> ImportResult:
    """Import the generic price format: header ``interval_start,interval_minutes,price[,location][,belief_time]``;
    ISO-8601 times with an offset; ``price`` in the operator's unit. ``belief_time`` per row, else the argument,
    else now. All-or-nothing, idempotent."""
    reader = csv.DictReader(stream)
    needed = {"interval_start", "interval_minutes", "price"}
    if not needed <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {sorted(needed)}")
    default_belief = belief_time or timezone.now()
    points = []
    for n, row in enumerate(reader, start=2):
        try:
            start = _aware(row["interval_start"])
            minutes = int(row["interval_minutes"])
            price = Decimal(row["price"])
            belief = _aware(row["belief_time"]) if row.get("belief_time") else default_belief
        except (ValueError, InvalidOperation, TypeError) as exc:
            raise CsvImportError(f"line {n}: {exc}") from None
        if minutes <= 0:
            raise CsvImportError(f"line {n}: interval_minutes must be > 0")
        points.append(
            PricePoint(
                product=product,
                location=(row.get("location") or "").strip(),
                interval_start=start,
                interval_minutes=minutes,
                price=price,
                kind=kind,
                source=Source.CSV,
                source_ref=source_ref,
                belief_time=belief,
            )
        )
    return _store_prices(points)


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value.astimezone(UTC)


def _store_prices(points: Sequence[PricePoint]) -> ImportResult:
    with transaction.atomic():
        before = PricePoint.objects.count()
        PricePoint.objects.bulk_create(points, ignore_conflicts=True, batch_size=1000)
        created = PricePoint.objects.count() - before
    return ImportResult(read=len(points), created=created, skipped_existing=len(points) - created)


def price_forecast_from_history(
    *, product: Product, day_start: datetime, lookback_days: int = 28, location: str | None = None
) -> int:
    """Forecast ``product``'s prices for the 24 h from ``day_start``: per hour of day, the mean of the cleared
    prices over the ``lookback_days`` before the latest history known now (a "same hour, recent days" profile).
    Stored as new forecast beliefs (source ``forecast``, known now). Returns the number of intervals forecast."""
    cleared = PricePoint.objects.filter(product=product, kind=PricePoint.Kind.CLEARED)
    if location is not None:
        cleared = cleared.filter(location=location)
    last = cleared.order_by("-interval_start").values_list("interval_start", flat=True).first()
    if last is None:
        raise MarketError(f"no cleared prices for {product} to forecast from")
    by_hour: dict[int, list[Decimal]] = {}
    for start, price in cleared.filter(interval_start__gt=last - timedelta(days=lookback_days)).values_list(
        "interval_start", "price"
    ):
        by_hour.setdefault(start.hour, []).append(price)
    now = timezone.now()
    minutes = product.operator.interval_minutes
    points = []
    for k in range(24 * 60 // minutes):
        start = day_start + timedelta(minutes=minutes * k)
        history = by_hour.get(start.hour)
        if not history:
            continue
        points.append(
            PricePoint(
                product=product,
                location=location or "",
                interval_start=start,
                interval_minutes=minutes,
                price=(sum(history, Decimal(0)) / len(history)).quantize(Decimal("0.0001")),
                kind=PricePoint.Kind.FORECAST,
                source=Source.FORECAST,
                source_ref=f"hour-of-day mean of {lookback_days} days to {last:%Y-%m-%d}",
                belief_time=now,
            )
        )
    return _store_prices(points).created


def site_load_record(*, site_id: int, points: Sequence[tuple[datetime, int, int]], source: str, source_ref: str) -> int:
    """Store site-meter load beliefs ``(interval_start, minutes, load_w)`` known now."""
    now = timezone.now()
    rows = [
        SiteLoadPoint(
            site_id=site_id,
            interval_start=s,
            interval_minutes=m,
            load_w=w,
            source=source,
            source_ref=source_ref,
            belief_time=now,
        )
        for s, m, w in points
    ]
    SiteLoadPoint.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def site_load_import_csv(*, site_id: int, stream: TextIO, source_ref: str) -> int:
    """Import a depot's site-meter load (peak shaving plans against it): header
    ``interval_start,interval_minutes,load_w``, ISO-8601 times with an offset, load in W without the fleet.
    All-or-nothing: a bad line refuses the file, naming the line."""
    reader = csv.DictReader(stream)
    needed = {"interval_start", "interval_minutes", "load_w"}
    if not needed <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {sorted(needed)}")
    points = []
    for n, row in enumerate(reader, start=2):
        try:
            point = (_aware(row["interval_start"]), int(row["interval_minutes"]), int(row["load_w"]))
        except (ValueError, TypeError) as exc:
            raise CsvImportError(f"line {n}: {exc}") from None
        if point[1] <= 0:
            raise CsvImportError(f"line {n}: interval_minutes must be > 0")
        points.append(point)
    return site_load_record(site_id=site_id, points=points, source=Source.CSV, source_ref=source_ref)


# --- Simulated market operator ------------------------------------------------------------------------------------


def market_clear_simulated(
    *,
    operator: MarketOperator,
    start: datetime,
    end: datetime,
    clearing_prices: dict[tuple[str, datetime], Decimal] | None = None,
    requirement_w: dict[tuple[str, datetime], int] | None = None,
) -> dict[str, int]:
    """Clear every submitted bid of ``operator`` in [start, end) like a pay-as-clear market would.

    Clearing price per (product code, interval start): ``clearing_prices`` or else the newest price belief for the
    interval. A bid priced at or under it is accepted; the market takes at most ``requirement_w`` per product and
    interval (cheapest offers first), so a bid can be partially awarded. Others are rejected. Each bid gets one
    ``Award`` (0 W when rejected) and its transition, in one transaction per bid.
    """
    who = Actor(label=f"system:simulated-{operator.code}")
    counts: dict[str, int] = {S.AWARDED: 0, S.PARTIALLY_AWARDED: 0, S.REJECTED: 0}
    bids = list(
        Bid.objects.filter(
            product__operator=operator, status=S.SUBMITTED, interval_start__gte=start, interval_start__lt=end
        )
        .select_related("product")
        .order_by("interval_start", "price", "id")
    )
    remaining: dict[tuple[str, datetime], int] = dict(requirement_w or {})
    now = timezone.now()
    for bid in bids:
        key = (bid.product.code, bid.interval_start)
        price = (clearing_prices or {}).get(key)
        if price is None:
            from markets.selectors import latest_prices

            known = latest_prices(product=bid.product, start=bid.interval_start, end=bid.interval_end, known_at=now)
            price = known.get(bid.interval_start)
        if price is None or bid.price > price:
            awarded = 0
        else:
            awarded = min(bid.quantity_w, remaining.get(key, bid.quantity_w))
            awarded -= awarded % bid.product.operator.bid_increment_w
            if key in remaining:
                remaining[key] -= awarded
        status = award_record(
            bid_id=bid.id,
            awarded_w=awarded,
            clearing_price=price if price is not None else Decimal(0),
            source=Award.Source.SIMULATED,
            source_ref=f"simulated {operator.code}",
            actor=who,
        )
        counts[status] += 1
    return {str(k): v for k, v in counts.items()}


def award_record(
    *,
    bid_id: int,
    awarded_w: int,
    clearing_price: Decimal,
    source: str,
    source_ref: str,
    actor: ActorLike,
) -> str:
    """Record the market's answer for one submitted bid and move it to awarded / partially awarded / rejected."""
    with transaction.atomic():
        bid = Bid.objects.select_for_update().get(pk=bid_id)
        if awarded_w < 0 or awarded_w > bid.quantity_w:
            raise MarketError(f"bid {bid.external_ref}: award {awarded_w} W outside 0..{bid.quantity_w} W")
        status = S.REJECTED if awarded_w == 0 else (S.AWARDED if awarded_w == bid.quantity_w else S.PARTIALLY_AWARDED)
        try:
            with transaction.atomic():
                Award.objects.create(
                    bid=bid,
                    product_id=bid.product_id,
                    portfolio=bid.portfolio,
                    interval_start=bid.interval_start,
                    interval_end=bid.interval_end,
                    awarded_w=awarded_w,
                    clearing_price=clearing_price,
                    source=source,
                    source_ref=source_ref,
                    received_at=timezone.now(),
                )
        except IntegrityError:
            raise MarketError(f"bid {bid.external_ref} already has an award") from None
        bid_transition(
            bid_id=bid_id, to_status=status, actor=actor, note=f"{awarded_w} W at {clearing_price} ({source_ref})"
        )
    return status


# --- CSV exchange with real markets --------------------------------------------------------------------------------

BID_EXPORT_COLUMNS = [
    "bid_ref",
    "operator",
    "product",
    "portfolio",
    "interval_start_utc",
    "interval_end_utc",
    "quantity_mw",
    "price",
    "price_unit",
    "currency",
]
AWARD_IMPORT_COLUMNS = ["bid_ref", "awarded_mw", "clearing_price"]


def bids_export_csv(*, operator: MarketOperator, start: datetime, end: datetime, statuses: Sequence[str]) -> str:
    """Bids of ``operator`` in [start, end) with one of ``statuses`` in the documented export format (README)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BID_EXPORT_COLUMNS)
    bids = Bid.objects.filter(
        product__operator=operator, interval_start__gte=start, interval_start__lt=end, status__in=statuses
    ).select_related("product")
    for bid in bids.order_by("interval_start", "product__code"):
        writer.writerow(
            [
                bid.external_ref,
                operator.code,
                bid.product.code,
                bid.portfolio,
                bid.interval_start.isoformat(),
                bid.interval_end.isoformat(),
                f"{Decimal(bid.quantity_w) / 1_000_000:f}",
                f"{bid.price:f}",
                operator.price_unit,
                operator.currency,
            ]
        )
    return out.getvalue()


def awards_import_csv(*, stream: TextIO, source_ref: str, actor: ActorLike) -> int:
    """Import the market's awards: header ``bid_ref,awarded_mw,clearing_price``; every bid must be submitted.

    All-or-nothing: any bad row (unknown or not-submitted bid, award above the offer, bad number, duplicate row)
    rolls the whole file back and names its line. Returns the number of awards recorded.
    """
    reader = csv.DictReader(stream)
    if not set(AWARD_IMPORT_COLUMNS) <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {AWARD_IMPORT_COLUMNS}")
    seen: set[str] = set()
    with transaction.atomic():
        count = 0
        for n, row in enumerate(reader, start=2):
            ref = (row["bid_ref"] or "").strip()
            if ref in seen:
                raise CsvImportError(f"line {n}: bid {ref} appears twice")
            seen.add(ref)
            try:
                awarded_w = int((Decimal(row["awarded_mw"]) * 1_000_000).to_integral_value())
                price = Decimal(row["clearing_price"])
            except (InvalidOperation, TypeError) as exc:
                raise CsvImportError(f"line {n}: {exc!r}") from None
            bid = Bid.objects.filter(external_ref=ref).first()
            if bid is None:
                raise CsvImportError(f"line {n}: unknown bid {ref!r}")
            if bid.status != S.SUBMITTED:
                raise CsvImportError(f"line {n}: bid {ref} is {bid.status}, not submitted")
            try:
                award_record(
                    bid_id=bid.id,
                    awarded_w=awarded_w,
                    clearing_price=price,
                    source=Award.Source.CSV,
                    source_ref=source_ref,
                    actor=actor,
                )
            except MarketError as exc:
                raise CsvImportError(f"line {n}: {exc}") from None
            count += 1
    return count


# --- Proposals -----------------------------------------------------------------------------------------------------


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
    from markets.planning import build_problem, schedule_for

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
                inputs=context["inputs"] | {"envelope": schedule.envelope},
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
            _audit(bid.id, who, "propose", after=S.DRAFT, quantity_w=qty, price=price)
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
        _audit(bid.id, who, "propose", before=S.DRAFT, after=S.DRAFT, quantity_w=qty, price=price)


def _new_ref() -> str:
    return f"B{uuid.uuid4().hex[:12].upper()}"
