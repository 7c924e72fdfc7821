"""Reads for markets: price beliefs as known at a time, the fleet the bids are for, bids and awards by window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TypeVar
from zoneinfo import ZoneInfo

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import Avg, Count, Model, QuerySet, Sum

from fleet.models import Membership, Role
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.selectors import is_operator, plugged_in_snapshots, portfolios_for
from markets.models import (
    BID_ADMIN_PERM,
    Award,
    Bid,
    BidProposal,
    DepotSite,
    MarketOperator,
    PricePoint,
    Product,
    SiteLoadPoint,
)
from markets.regulation.selectors import settlements_for

M = TypeVar("M", bound=Model)


def latest_prices(
    *, product: Product, start: datetime, end: datetime, known_at: datetime, location: str | None = None
) -> dict[datetime, Decimal]:
    """For each interval start in [start, end), the newest price belief known at ``known_at`` (forecast or
    cleared; a cleared price known by then wins over any forecast)."""
    rows = PricePoint.objects.filter(
        product=product, interval_start__gte=start, interval_start__lt=end, belief_time__lte=known_at
    )
    if location is not None:
        rows = rows.filter(location=location)
    best: dict[datetime, tuple[int, datetime, Decimal]] = {}
    for p in rows.only("interval_start", "kind", "belief_time", "price"):
        rank = (1 if p.kind == PricePoint.Kind.CLEARED else 0, p.belief_time)
        if p.interval_start not in best or rank > best[p.interval_start][:2]:
            best[p.interval_start] = (*rank, p.price)
    return {k: v[2] for k, v in best.items()}


def product_get(*, ref: str, kind: str | None = None, active_only: bool = False) -> Product:
    """The product ``ref`` names, always as ``operator:code`` (e.g. ``pjm:reg-d``): the one lookup of a product by
    name, for the intake edges and the commands.

    A bare code is refused: two operators may sell products under the same code, and a signal routed to the wrong
    operator's product would dispatch the wrong portfolio. Raises ``Product.DoesNotExist`` with a message naming
    ``ref`` when it is not of that form, or when no product (of ``kind``, active if ``active_only``) matches.
    """
    operator, sep, code = ref.partition(":")
    if not (sep and operator and code):
        raise Product.DoesNotExist(f"product must be given as operator:code (e.g. pjm:reg-d), got {ref!r}")
    products = Product.objects.filter(operator__code=operator, code=code)
    if kind is not None:
        products = products.filter(kind=kind)
    if active_only:
        products = products.filter(active=True)
    found = products.select_related("operator").first()
    if found is None:
        what = " ".join(word for word in ("active" if active_only else "", kind or "", "product") if word)
        raise Product.DoesNotExist(f"no {what} {ref!r}")
    return found


def latest_site_load(*, site: DepotSite, start: datetime, end: datetime, known_at: datetime) -> dict[datetime, int]:
    best: dict[datetime, tuple[datetime, int]] = {}
    for p in SiteLoadPoint.objects.filter(
        site=site, interval_start__gte=start, interval_start__lt=end, belief_time__lte=known_at
    ):
        if p.interval_start not in best or p.belief_time > best[p.interval_start][0]:
            best[p.interval_start] = (p.belief_time, p.load_w)
    return {k: v[1] for k, v in best.items()}


def portfolio_snapshots(*, portfolio: str, at: datetime) -> list[VehicleSnapshot]:
    """Plugged-in vehicles of the portfolio: ``all`` (every fleet) or ``fleet-<id>``."""
    if portfolio.startswith("fleet-") and portfolio[6:].isdigit():
        return plugged_in_snapshots(at=at, fleet_id=int(portfolio[6:]))
    return plugged_in_snapshots(at=at)


def bids_in_window(
    *, start: datetime, end: datetime, operator: MarketOperator | None = None, portfolios: set[str] | None = None
) -> QuerySet[Bid]:
    """Bids of intervals starting in ``[start, end)`` (of ``operator``'s products, of ``portfolios``: None = all)."""
    bids = Bid.objects.filter(interval_start__gte=start, interval_start__lt=end).select_related(
        "product", "product__operator"
    )
    bids = in_portfolios(bids, portfolios)
    if operator is not None:
        bids = bids.filter(product__operator=operator)
    return bids.order_by("product__operator__code", "product__code", "interval_start")


def awards_active(*, at: datetime) -> QuerySet[Award]:
    """Awards being delivered at ``at`` (dispatch reads these to compute fleet setpoints)."""
    return Award.objects.filter(interval_start__lte=at, interval_end__gt=at, awarded_w__gt=0).select_related("product")


def proposals_for_day(*, day_start: datetime) -> QuerySet[BidProposal]:
    return BidProposal.objects.filter(horizon_start__gte=day_start, horizon_start__lt=day_start + timedelta(days=1))


# --- who bids for which portfolio ----------------------------------------------------------------------------------


def is_bidding_desk(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Bids on every portfolio: operators, and holders of ``markets.bid_admin`` (the "bidding admin" group: the
    aggregator's own bidding desk, kept from before tenancy; only an operator grants it, in the admin)."""
    return is_operator(user) or bool(
        user.is_authenticated and user.is_active and getattr(user, "has_perm", lambda _: False)(BID_ADMIN_PERM)
    )


def bid_portfolios_for(user: AbstractBaseUser | AnonymousUser) -> set[str] | None:
    """The portfolios whose bids and awards a user sees and changes: None (all) for the bidding desk, else the
    ``fleet-<id>`` portfolios of the organisations where the user is a bidding admin."""
    if is_bidding_desk(user):
        return None
    return portfolios_for(user, roles=[Role.BIDDING_ADMIN])


def may_bid(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether the user has a bidding role at all (the bidding pages and API refuse everyone else with 403)."""
    if not (user.is_authenticated and user.is_active):
        return False
    return is_bidding_desk(user) or Membership.objects.filter(user_id=user.pk, role=Role.BIDDING_ADMIN).exists()


def in_portfolios(rows: QuerySet[M], portfolios: set[str] | None, *, field: str = "portfolio") -> QuerySet[M]:
    """``rows`` whose ``field`` is one of ``portfolios`` (None: every row)."""
    return rows if portfolios is None else rows.filter(**{f"{field}__in": sorted(portfolios)})


def bids_for(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Bid]:
    bids = Bid.objects.select_related("product", "product__operator")
    return in_portfolios(bids, bid_portfolios_for(user))


def awards_for(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Award]:
    awards = Award.objects.select_related("product", "bid")
    return in_portfolios(awards, bid_portfolios_for(user))


# --- the bidding pages: delivery days, their gates, bids with what became of them -----------------------------------


class GateState:
    """Where a delivery day stands against its day-ahead gate and its own hours."""

    OPEN = "open"  # bids may still be proposed, approved and submitted
    CLOSED = "closed"  # the day-ahead gate closed; delivery has not started
    DELIVERING = "delivering"  # the day is under way
    DELIVERED = "delivered"  # the day is over


@dataclass(frozen=True)
class DeliveryDay:
    """One operator's delivery day (local midnight to midnight) and its day-ahead gate, as of ``now``."""

    day: date
    start: datetime
    end: datetime
    gate_closure: datetime
    state: str

    @property
    def open(self) -> bool:
        return self.state == GateState.OPEN


def delivery_day(*, operator: MarketOperator, day: date, now: datetime) -> DeliveryDay:
    tz = ZoneInfo(operator.timezone)
    local_start = datetime.combine(day, time.min, tzinfo=tz)
    start, end = local_start.astimezone(UTC), (local_start + timedelta(days=1)).astimezone(UTC)
    closes = datetime.combine(day - timedelta(days=1), operator.gate_closure_local, tzinfo=tz).astimezone(UTC)
    if now >= end:
        state = GateState.DELIVERED
    elif now >= start:
        state = GateState.DELIVERING
    elif now >= closes:
        state = GateState.CLOSED
    else:
        state = GateState.OPEN
    return DeliveryDay(day=day, start=start, end=end, gate_closure=closes, state=state)


def operator_today(*, operator: MarketOperator, now: datetime) -> date:
    """The operator's local date at ``now`` (its delivery days are local days)."""
    return now.astimezone(ZoneInfo(operator.timezone)).date()


@dataclass(frozen=True)
class DaySummary:
    """A delivery day on the bidding index: its gate, and the user's bids, awards and settled revenue in it."""

    operator: MarketOperator
    delivery: DeliveryDay
    bids: int
    by_status: dict[str, int]
    offered_mwh: Decimal
    awarded_mwh: Decimal
    revenue: Decimal | None  # settled net revenue of the day's awards (None: nothing settled the user may see)
    proposal_status: str


def _mwh(watts: int | None, hours: Decimal) -> Decimal:
    return (Decimal(watts or 0) * hours / Decimal(1_000_000)).quantize(Decimal("0.1"))


def operator_days(
    *, operator: MarketOperator, days: Iterable[date], user: AbstractBaseUser | AnonymousUser, now: datetime
) -> list[DaySummary]:
    """For each of ``days``: its gate state and the user's bids (their portfolios only), awards, settled revenue."""
    portfolios = bid_portfolios_for(user)
    hours = Decimal(operator.interval_minutes) / Decimal(60)
    out = []
    for day in days:
        delivery = delivery_day(operator=operator, day=day, now=now)
        bids = bids_in_window(start=delivery.start, end=delivery.end, operator=operator, portfolios=portfolios)
        by_status = dict(bids.order_by().values_list("status").annotate(n=Count("id")))
        offered = bids.aggregate(total=Sum("quantity_w"))["total"]
        awards = Award.objects.filter(bid__in=bids)
        awarded = awards.aggregate(total=Sum("awarded_w"))["total"]
        settled = settlements_for(user).filter(award__in=awards).aggregate(total=Sum("net"))["total"]
        proposal = in_portfolios(
            BidProposal.objects.filter(operator=operator, horizon_start=delivery.start), portfolios
        ).first()
        out.append(
            DaySummary(
                operator=operator,
                delivery=delivery,
                bids=sum(by_status.values()),
                by_status=by_status,
                offered_mwh=_mwh(offered, hours),
                awarded_mwh=_mwh(awarded, hours),
                revenue=settled,
                proposal_status=proposal.status if proposal is not None else "",
            )
        )
    return out


@dataclass(frozen=True)
class BidOutcome:
    """A bid with what became of it: the award, what was not awarded, the performance score, the settled revenue."""

    bid: Bid
    forecast: Decimal | None  # the newest price forecast for the bid's interval (what the chart plots)
    award: Award | None
    shortfall_w: int | None  # offered - awarded, once awarded
    score: Decimal | None  # performance score applied in settlement (1 for unscored products)
    revenue: Decimal | None  # settled net, in the operator's currency
    settlements: int


@dataclass(frozen=True)
class BiddingDay:
    """One operator's delivery day as its bidding page shows it (and its CSV exports): only that operator's products,
    only the user's portfolios."""

    operator: MarketOperator
    delivery: DeliveryDay
    products: list[Product]
    outcomes: list[BidOutcome]
    forecasts: dict[str, dict[datetime, Decimal]]  # product code -> interval start -> newest forecast price
    proposal: BidProposal | None
    portfolios: set[str] | None

    @property
    def revenue(self) -> Decimal | None:
        values = [o.revenue for o in self.outcomes if o.revenue is not None]
        return sum(values, Decimal(0)) if values else None


def price_forecasts(*, product: Product, start: datetime, end: datetime, known_at: datetime) -> dict[datetime, Decimal]:
    """The newest *forecast* price of each interval in ``[start, end)`` known at ``known_at`` (cleared prices aside)."""
    rows = (
        PricePoint.objects.filter(
            product=product,
            kind=PricePoint.Kind.FORECAST,
            interval_start__gte=start,
            interval_start__lt=end,
            belief_time__lte=known_at,
        )
        .order_by("interval_start", "-belief_time", "-id")
        .values_list("interval_start", "price")
    )
    newest: dict[datetime, Decimal] = {}
    for interval_start, price in rows:
        newest.setdefault(interval_start, price)
    return newest


def bidding_day(
    *, operator: MarketOperator, day: date, user: AbstractBaseUser | AnonymousUser, now: datetime
) -> BiddingDay:
    delivery = delivery_day(operator=operator, day=day, now=now)
    portfolios = bid_portfolios_for(user)
    products = list(Product.objects.filter(operator=operator).select_related("operator").order_by("code"))
    bids = list(
        bids_in_window(start=delivery.start, end=delivery.end, operator=operator, portfolios=portfolios)
        .select_related("award")
        .order_by("interval_start", "product__code", "portfolio")
    )
    awards = [b.award for b in bids if _award_of(b) is not None]
    settled: dict[int, tuple[Decimal, Decimal, int]] = {}
    for row in (
        settlements_for(user)
        .filter(award__in=awards)
        .values("award_id")
        .annotate(net=Sum("net"), score=Avg("score_value"), n=Count("id"))
    ):
        settled[row["award_id"]] = (row["net"], row["score"], row["n"])
    forecasts = {
        p.code: price_forecasts(product=p, start=delivery.start, end=delivery.end, known_at=now) for p in products
    }
    outcomes = []
    for bid in bids:
        award = _award_of(bid)
        money = settled.get(award.pk) if award is not None else None
        outcomes.append(
            BidOutcome(
                bid=bid,
                forecast=forecasts.get(bid.product.code, {}).get(bid.interval_start),
                award=award,
                shortfall_w=max(0, bid.quantity_w - award.awarded_w) if award is not None else None,
                score=Decimal(money[1]).quantize(Decimal("0.001")) if money is not None else None,
                revenue=money[0] if money is not None else None,
                settlements=money[2] if money is not None else 0,
            )
        )
    proposal = in_portfolios(
        BidProposal.objects.filter(operator=operator, horizon_start=delivery.start).order_by("portfolio"), portfolios
    ).first()
    return BiddingDay(operator, delivery, products, outcomes, forecasts, proposal, portfolios)


def _award_of(bid: Bid) -> Award | None:
    try:
        return bid.award
    except Award.DoesNotExist:
        return None
