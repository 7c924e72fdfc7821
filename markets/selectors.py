"""Reads for markets: price beliefs as known at a time, the fleet the bids are for, bids and awards by window."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import Model, QuerySet

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
