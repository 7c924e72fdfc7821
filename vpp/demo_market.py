"""The demo's market: a regulation market sized to the demo fleet, its prices, and offers that become awards
through the real bidding services (draft -> approved -> submitted -> ``market_clear_simulated`` -> award).

**Why a demo operator.** PJM takes regulation offers in 0.1 MW steps; the demo's handful of cars holds a few tens
of kW. ``demo-rto`` is PJM's RegD product under PJM's rules (hourly intervals, New York time, 2-s signal) with a
5 kW minimum and 1 kW steps, so the demo fleet can be awarded at all. Nothing else about the market differs.

**Late offers.** A real market closes an hour's offers before it starts. The demo starts at any moment and must
regulate the hour under way, and the history it generates lies in the past: for those hours (gate already closed)
the simulated operator takes the offer late, and the bid's audit trail says so (``BidEvent`` note). Hours whose
gate is still open are submitted through ``bid_transition`` like any bid. The hour under way is taken from the
moment the offer is made (the next 10-s scoring row, :func:`late_start`), not from the top of the hour: the fleet
cannot have regulated the minutes before it, so the award does not claim them and settlement never has to pay or
score them. With less than :data:`LATE_MIN` left in the hour, the demo waits for the next hour instead.

**Synchronized reserve.** The demo operator also buys synchronized reserve (``demo-rto:sync-reserve``: PJM's
product, 10-minute response, 30 minutes sustained, at demo scale and settled per quarter-hour like its RegD). Each
awarded hour the fleet offers :data:`RESERVE_SHARE` of what its cars could deliver for 30 minutes
(:func:`reserve_offer_w`) and its regulation offer is sized on what is left once that reserve is kept in the cars
(:func:`offer_capacity_w` with ``reserve_w``, as dispatch keeps it: ``vpp.dispatch.values.reserve_room``). The
hourly reserve price (:func:`reserve_price`) has the shape of PJM's SRMCP, $6 to $14/MW-h. While it calls an event
on a portfolio, the demo operator holds that portfolio's regulation signal at its value at the event start, so the
metered response is the reserve's (the regulation swing would otherwise blur a demo-sized response).

**Quarter-hour settlement.** PJM settles and scores regulation per hour, so a demo started mid-hour would show its
first settlement only after the first full hour and its 5 min 10 s of scoring look-ahead (up to 1 h 7 min). The
demo operator settles per 15 minutes (``Product.settlement_minutes = 15``), as markets with a 15-minute settlement
period do; each quarter-hour is scored with PJM's method on its own rows (90 scored rows, 61 windows of 31, plus
the 31 look-ahead rows: the same method as PJM's hourly and 40-minute scores, on a shorter period) and paid pro
rata (MW x 0.25 h x price x score). A shorter grid would rest every score on too few windows (5 min: one). Only
the first period of a late award is shorter: it runs from the award's start to the next quarter-hour, joined to the
following quarter when under 5 minutes (PJM's minimum: one window and its look-ahead). So the first settlement is
due 12 to 27 minutes after the award starts (its period, 5 to 20 minutes, then 5 min 10 s of look-ahead and the
settlement task's 2-min margin for late meter values), i.e. within about half an hour of ``make run``.
Prices stay hourly, as PJM publishes them: a quarter-hour is paid at its hour's prices. Real operators' products
keep hourly settlement (the default).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fleet.models import Fleet
from fleet.numerics.arrays import FleetArrays, power_bounds
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.seeding import DEMO, HARBOUR
from fleet.selectors import fleet_portfolio
from markets.models import Award, Bid, MarketOperator, Product
from markets.regulation.models import EnergyPrice, RegulationPrice
from markets.regulation.services import energy_price_record, regulation_price_record
from markets.regulation.settling import MIN_PERIOD
from markets.services.bids import Actor, MarketError, bid_event_record, bid_transition
from markets.services.clearing import market_clear_simulated
from vpp.dispatch.values import reserve_room

OPERATOR = "demo-rto"
PRODUCT = "reg-d"
PRODUCT_REF = f"{OPERATOR}:{PRODUCT}"
RESERVE_PRODUCT = "sync-reserve"
RESERVE_SUSTAIN_MINUTES = 30  # PJM: a synchronized reserve event is held up to 30 minutes
RESERVE_SHARE = 0.25  # of what the fleet's cars could deliver for 30 minutes, offered as reserve
HOUR = timedelta(hours=1)
SETTLEMENT_MINUTES = 15
#: The least of the hour under way the demo takes late: PJM's shortest scorable period (a 31-row window).
LATE_MIN = MIN_PERIOD
ROW_S = 10  # PJM's scoring rows: an award starts on one
WHO = Actor(label="system:demo-market")
PRICE_SOURCE = "demo"  # prices the demo market publishes (RegulationPrice / EnergyPrice ``source``)

S = Bid.Status


def demo_product() -> Product:
    """The demo operator and its RegD product (created once; an admin's later edits are kept)."""
    operator, _ = MarketOperator.objects.get_or_create(
        code=OPERATOR,
        defaults={
            "name": "Demo RTO (PJM RegD rules at demo-fleet scale)",
            "timezone": "America/New_York",
            "interval_minutes": 60,
            "gate_closure_local": time(10, 30),
            "intraday_gate_minutes": 0,
            "min_bid_w": 5_000,
            "bid_increment_w": 1_000,
            "currency": "USD",
        },
    )
    product, _ = Product.objects.get_or_create(
        operator=operator,
        code=PRODUCT,
        defaults={
            "name": "Regulation D (demo scale, 2-s signal)",
            "kind": Product.Kind.REGULATION,
            "direction": Product.Direction.SYMMETRIC,
            "signal_period_s": 2,
            "response_time_s": 2,
            "sustain_minutes": 15,
            "expected_up_activation": Decimal("0.32"),
            "expected_down_activation": Decimal("0.25"),
            "settlement_minutes": SETTLEMENT_MINUTES,
        },
    )
    return product


def demo_reserve_product() -> Product:
    """The demo operator's synchronized reserve (PJM's product at demo scale; created once)."""
    operator = demo_product().operator
    product, _ = Product.objects.get_or_create(
        operator=operator,
        code=RESERVE_PRODUCT,
        defaults={
            "name": "Synchronized reserve (demo scale)",
            "kind": Product.Kind.RESERVE,
            "direction": Product.Direction.UP,
            "response_time_s": 600,
            "sustain_minutes": RESERVE_SUSTAIN_MINUTES,
            "expected_up_activation": Decimal("0.005"),
            "expected_down_activation": Decimal("0"),
            "settlement_minutes": SETTLEMENT_MINUTES,
        },
    )
    return product


def late_start(*, hour: datetime, now: datetime) -> datetime | None:
    """When the demo's award for ``hour`` starts: the hour itself if it is still ahead, else the next 10-s scoring
    row after ``now`` (a late offer for the rest of the hour under way), or None when less than :data:`LATE_MIN`
    of the hour is left."""
    if now <= hour:
        return hour
    start = datetime.fromtimestamp(-(-now.timestamp() // ROW_S) * ROW_S, UTC)
    return start if hour + HOUR - start >= LATE_MIN else None


def demo_portfolios() -> list[tuple[str, Fleet]]:
    """The demo organisations' fleets as dispatch names them (``fleet-<id>``)."""
    fleets = Fleet.objects.filter(organisation__slug__in=[DEMO.slug, HARBOUR.slug], name="Depot").order_by("pk")
    return [(fleet_portfolio(f.pk), f) for f in fleets]


# --- prices: a plausible daily shape (USD), published by the demo market for every hour it awards -----------------


def capacity_price(hour: datetime) -> Decimal:
    """RMCCP-like capacity clearing price ($/MW-h): higher in the morning and evening peaks. The off-peak floor
    ($20, with the $10.50 performance price: $30.50/MW-h, within PJM's recent range) covers the wear a car's pack
    takes regulating at the demo's default battery (priced per car by ``cycle_aging_cost``): at a lower floor the
    quiet hours settle at a loss, and a bidder would not offer into them."""
    h = hour.astimezone(UTC).hour
    peak = math.exp(-(((h - 13) % 24) ** 2) / 8) + math.exp(-(((h - 22) % 24) ** 2) / 6)
    return Decimal(f"{20 + 14 * peak:.2f}")


def reserve_price(hour: datetime) -> Decimal:
    """SRMCP-like synchronized reserve clearing price ($/MW-h): $6 off-peak to $14 at the evening peak."""
    h = hour.astimezone(UTC).hour
    return Decimal(f"{6 + 8 * math.exp(-(((h - 22) % 24) ** 2) / 6):.2f}")


def energy_price(hour: datetime) -> Decimal:
    h = hour.astimezone(UTC).hour
    return Decimal(f"{28 + 22 * math.exp(-(((h - 22) % 24) ** 2) / 10):.2f}")


def prices_publish(*, product: Product, hour: datetime, known_at: datetime | None = None) -> None:
    """The demo market's regulation and energy prices for one hour (recorded once)."""
    known_at = known_at or timezone.now()
    if not RegulationPrice.objects.filter(product=product, interval_start=hour).exists():
        regulation_price_record(
            product=product,
            interval_start=hour,
            performance_price=Decimal("3.50"),
            mileage_ratio=Decimal("3.0"),
            capacity_price=capacity_price(hour),
            source=PRICE_SOURCE,
            source_ref="demo market",
            belief_time=known_at,
        )
    if not EnergyPrice.objects.filter(operator_id=product.operator_id, location="", interval_start=hour).exists():
        energy_price_record(
            operator_id=product.operator_id,
            interval_start=hour,
            interval_minutes=60,
            price=energy_price(hour),
            source=PRICE_SOURCE,
            source_ref="demo market",
            belief_time=known_at,
        )


# --- offers -> awards ----------------------------------------------------------------------------------------------


def reserve_offer_w(snapshots: list[VehicleSnapshot], *, at: datetime, share: float = RESERVE_SHARE) -> int:
    """Synchronized reserve to offer (whole kW): ``share`` of what the cars could deliver for the sustain time from
    ``at`` (each its discharge power, or less if its energy above its floor or departure need runs out sooner)."""
    if not snapshots:
        return 0
    _, deliverable = reserve_room(
        FleetArrays.from_snapshots(snapshots), held_w=10**12, sustain_h=RESERVE_SUSTAIN_MINUTES / 60, now=at.timestamp()
    )
    return max(int(float(deliverable.sum()) * share) // 1000 * 1000, 0)


def offer_capacity_w(snapshots: list[VehicleSnapshot], *, at: datetime, share: float = 0.6, reserve_w: int = 0) -> int:
    """What the fleet can offer symmetrically around its must-charge level (whole kW), ``share`` of the room left
    once ``reserve_w`` of synchronized reserve is kept in the cars (as dispatch keeps it)."""
    if not snapshots:
        return 0
    fleet, _ = reserve_room(
        FleetArrays.from_snapshots(snapshots),
        held_w=reserve_w,
        sustain_h=RESERVE_SUSTAIN_MINUTES / 60,
        now=at.timestamp(),
    )
    bounds = power_bounds(fleet, now=at, duration_s=3600)
    lo, hi = float(bounds.lo.sum()), float(bounds.hi.sum())
    base = min(max(float(max(bounds.lo.clip(min=0).sum(), 0.0)), lo), hi)
    room = min(hi - base, base - lo)
    if room < (hi - lo) / 4:  # the must-charge level sits near an edge: regulate around the middle
        room = (hi - lo) / 2
    return max(int(room * share) // 1000 * 1000, 0)


@dataclass(frozen=True)
class Offer:
    bid: Bid
    award: Award | None


def offer_award(
    *,
    product: Product,
    portfolio: str,
    hour: datetime,
    capacity_w: int,
    simulated: bool,
    now: datetime | None = None,
    start: datetime | None = None,
    clearing: Decimal | None = None,
) -> Offer | None:
    """Offer ``capacity_w`` of ``product`` for ``hour`` (from ``start`` within it: a late offer, :func:`late_start`)
    and have the simulated operator clear it at ``clearing`` (default: the regulation :func:`capacity_price`);
    None when the hour already has a bid of the product for the portfolio (idempotent) or the capacity is under
    the market's minimum."""
    operator = product.operator
    start = start or hour
    if capacity_w < operator.min_bid_w or not hour <= start < hour + HOUR:
        return None
    overlapping = Bid.objects.filter(
        product=product, portfolio=portfolio, interval_start__lt=hour + HOUR, interval_end__gt=hour
    )
    if overlapping.exists():
        return None
    clearing = clearing if clearing is not None else capacity_price(hour)
    price = (clearing * Decimal("0.6")).quantize(Decimal("0.01"))
    with transaction.atomic():
        bid = Bid.objects.create(
            product=product,
            portfolio=portfolio,
            interval_start=start,
            interval_end=hour + HOUR,
            quantity_w=capacity_w - capacity_w % operator.bid_increment_w,
            price=price,
            proposed_quantity_w=capacity_w,
            proposed_price=price,
            forecast_price=clearing,
            external_ref=f"DEMO-{'H' if simulated else 'L'}-{uuid.uuid4().hex[:10].upper()}",
            simulated=simulated,
        )
        bid_event_record(bid.id, WHO, "propose", after=S.DRAFT, quantity_w=bid.quantity_w, price=price)
        bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=WHO, note="demo market: approved automatically")
        bid_submit(bid_id=bid.id, now=now)
    market_clear_simulated(
        operator=operator, start=start, end=hour + HOUR, clearing_prices={(product.code, start): clearing}
    )
    award = Award.objects.filter(bid_id=bid.id).first()
    if simulated and award is not None:
        Award.objects.filter(pk=award.pk).update(simulated=True)
    return Offer(bid=Bid.objects.get(pk=bid.pk), award=award)


def bid_submit(*, bid_id: int, now: datetime | None = None) -> None:
    """Submit through ``bid_transition``; past the gate (the hour under way, or the simulated past) the demo market
    takes the offer late, recorded as such in the bid's audit trail."""
    try:
        bid_transition(bid_id=bid_id, to_status=S.SUBMITTED, actor=WHO)
        return
    except MarketError as exc:
        if "gate closed" not in str(exc):
            raise
        why = str(exc)
    updated = Bid.objects.filter(pk=bid_id, status=S.APPROVED).update(
        status=S.SUBMITTED, version=F("version") + 1, updated_at=now or timezone.now()
    )
    if updated != 1:
        raise MarketError(f"bid {bid_id} changed meanwhile")
    bid_event_record(
        bid_id,
        WHO,
        "transition",
        before=S.APPROVED,
        after=S.SUBMITTED,
        note=f"demo market takes the offer late ({why}): the demo regulates the hour under way / its simulated past",
    )
