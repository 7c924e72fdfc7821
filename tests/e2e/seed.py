"""Market data for the browser tests, made by the real code: a regulation award per hour, the signal the operator
sent, meter values of stations following it (tests.markets.regulation.data), then scoring and settlement by
``markets.regulation.settling.settlement_compute``; and tomorrow's draft bids with a price forecast.

Also usable by hand on a demo database (``manage.py shell -c "from tests.e2e.seed import *; demo_market_seed()"``)
to look at the pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from chargers.models import Station
from fleet.models import Fleet, PlugSession, Vehicle
from fleet.selectors import fleet_portfolio
from markets.models import Award, Bid, PricePoint, Product, Source
from markets.regulation.services import energy_price_record, regulation_price_record
from markets.regulation.settling import settlement_compute
from markets.selectors import delivery_day, operator_today
from tests.markets.regulation.data import regulation_product, store_following, store_signal

HOUR_S = 3600
LOOK_AHEAD_S = 304  # the scoring template's look-ahead past the hour (5 min 4 s at 2-s samples)


@dataclass(frozen=True)
class MarketSeed:
    portfolio: str
    settled_hours: list[datetime]
    tomorrow: str  # the operator's next delivery day whose gate is open, YYYY-MM-DD
    draft_refs: list[str]


def settled_hours_seed(*, fleet: Fleet, stations: list[Station], hours: list[datetime]) -> None:
    """Each hour: RegD awarded to the fleet's portfolio, its prices, the signal, the stations following it (one of
    the fleet's vehicles plugged in at each), then scored and settled."""
    product = regulation_product()
    portfolio = fleet_portfolio(fleet.pk)
    first, last = min(hours), max(hours)
    span = int((last - first).total_seconds()) + HOUR_S + LOOK_AHEAD_S + 10
    store_signal(product, first, span_s=span, portfolio=portfolio)
    store_following(stations, first, capacity_w=200_000 * len(stations), span_s=span)
    vehicles = list(Vehicle.objects.filter(fleet=fleet).order_by("id")[: len(stations)])
    for vehicle, station in zip(vehicles, stations, strict=False):
        PlugSession.objects.create(
            vehicle=vehicle,
            station_id=station.station_id,
            evse_id=1,
            matched_by="manual",
            started_at=first,
            ended_at=last + timedelta(seconds=HOUR_S + LOOK_AHEAD_S),
        )
    for hour in hours:
        award = _award(product, portfolio, hour, awarded_w=200_000 * len(stations))
        regulation_price_record(
            product=product, interval_start=hour, performance_price=Decimal("2.75"), mileage_ratio=Decimal("3.1")
        )
        energy_price_record(
            operator_id=product.operator_id, interval_start=hour, interval_minutes=60, price=Decimal("42.00")
        )
        settlement_compute(award=award, period_start=hour)


def _award(product: Product, portfolio: str, hour: datetime, *, awarded_w: int) -> Award:
    """The submitted bid of an hour and the market's award of all of it (what the bidding page shows)."""
    bid = Bid.objects.create(
        product=product,
        portfolio=portfolio,
        interval_start=hour,
        interval_end=hour + timedelta(hours=1),
        quantity_w=awarded_w,
        price=Decimal("18.50"),
        forecast_price=Decimal("18.00"),
        status=Bid.Status.AWARDED,
        external_ref=f"S{hour:%m%d%H}{portfolio.upper()}"[:64],
    )
    return Award.objects.create(
        bid=bid,
        product=product,
        portfolio=portfolio,
        interval_start=hour,
        interval_end=hour + timedelta(hours=1),
        awarded_w=awarded_w,
        clearing_price=Decimal("18.50"),
        source=Award.Source.SIMULATED,
        received_at=hour - timedelta(hours=12),
    )


def tomorrow_bids_seed(*, portfolio: str, now: datetime, hours: int = 6) -> tuple[str, list[str]]:
    """Draft RegD bids for the first ``hours`` of the operator's next delivery day, with a price forecast for the
    whole day; returns the day (YYYY-MM-DD) and the bids' references."""
    product = regulation_product()
    operator = product.operator
    day = operator_today(operator=operator, now=now) + timedelta(days=1)
    delivery = delivery_day(operator=operator, day=day, now=now)
    if not delivery.open:  # past the day-ahead gate (10:30 in New York): the day after is the next one bid for
        day += timedelta(days=1)
        delivery = delivery_day(operator=operator, day=day, now=now)
    refs = []
    for k in range(24):
        start = delivery.start + timedelta(hours=k)
        local = start.astimezone(ZoneInfo(operator.timezone)).hour
        price = Decimal("12.00") + Decimal(abs(local - 14)) / Decimal(2)
        PricePoint.objects.create(
            product=product,
            interval_start=start,
            interval_minutes=60,
            price=price,
            kind=PricePoint.Kind.FORECAST,
            source=Source.FORECAST,
            source_ref="e2e",
            belief_time=now - timedelta(hours=1),
        )
        if k < hours:
            ref = f"T{day:%m%d}{k:02d}{portfolio.upper()}"[:64]
            Bid.objects.create(
                product=product,
                portfolio=portfolio,
                interval_start=start,
                interval_end=start + timedelta(hours=1),
                quantity_w=300_000,
                price=price,
                proposed_quantity_w=300_000,
                proposed_price=price,
                forecast_price=price,
                external_ref=ref,
            )
            refs.append(ref)
    return day.isoformat(), refs


def market_seed(*, fleet: Fleet, stations: list[Station], now: datetime | None = None, hours: int = 3) -> MarketSeed:
    """Settled hours ending two hours ago, and tomorrow's draft bids, for ``fleet``."""
    now = now or datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    settled = [top - timedelta(hours=k) for k in range(hours - 1, -1, -1)]
    settled_hours_seed(fleet=fleet, stations=stations, hours=settled)
    day, refs = tomorrow_bids_seed(portfolio=fleet_portfolio(fleet.pk), now=now)
    return MarketSeed(fleet_portfolio(fleet.pk), settled, day, refs)


def demo_market_seed(organisation_slug: str = "demo", stations: int = 2) -> MarketSeed:
    """On a demo database (``manage.py demo_seed``): market data for the demo organisation's first fleet."""
    fleet = Fleet.objects.filter(organisation__slug=organisation_slug).order_by("id").first()
    assert fleet is not None, "run manage.py demo_seed first"
    chosen = list(
        Station.objects.filter(ownership__organisation__slug=organisation_slug).order_by("station_id")[:stations]
    )
    return market_seed(fleet=fleet, stations=chosen)
