"""Reads for markets: price beliefs as known at a time, the fleet the bids are for, bids and awards by window."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import QuerySet

from fleet.numerics.snapshot import VehicleSnapshot
from fleet.selectors import plugged_in_snapshots
from markets.models import Award, Bid, BidProposal, DepotSite, MarketOperator, PricePoint, Product, SiteLoadPoint


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


def bids_in_window(*, start: datetime, end: datetime, operator: MarketOperator | None = None) -> QuerySet[Bid]:
    bids = Bid.objects.filter(interval_start__gte=start, interval_start__lt=end).select_related(
        "product", "product__operator"
    )
    if operator is not None:
        bids = bids.filter(product__operator=operator)
    return bids.order_by("product__operator__code", "product__code", "interval_start")


def awards_active(*, at: datetime) -> QuerySet[Award]:
    """Awards being delivered at ``at`` (dispatch reads these to compute fleet setpoints)."""
    return Award.objects.filter(interval_start__lte=at, interval_end__gt=at, awarded_w__gt=0).select_related("product")


def proposals_for_day(*, day_start: datetime) -> QuerySet[BidProposal]:
    return BidProposal.objects.filter(horizon_start__gte=day_start, horizon_start__lt=day_start + timedelta(days=1))
