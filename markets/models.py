"""Markets: operators, products, price beliefs, bids, awards and the audit trail of every bid change.

Units: power in integer W, energy in integer Wh, money ``Decimal`` in the operator's currency, times UTC.
A price is per MW of capacity per hour (``$/MW-h``, what PJM publishes as ``$/MWh`` for reserve and regulation
capacity) unless the operator's ``price_unit`` says otherwise.

Rules that span rows (lifecycle transitions, clearing, imports) live in the ``markets/services/`` package (one
module per subject); reads in ``markets/selectors.py``. Nothing here has side effects in ``save()``.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q


class MarketOperator(models.Model):
    """A market (ISO/RTO, TSO, or the depot's own site meter) and its bidding rules.

    Day-ahead gate closure is ``gate_closure_local`` on the day before delivery in ``timezone``; intraday
    bids for one interval close ``intraday_gate_minutes`` before that interval starts.
    """

    class PriceUnit(models.TextChoices):
        PER_MW_H = "per_mw_h", "currency per MW of capacity per hour"
        PER_KW_MONTH = "per_kw_month", "currency per kW of peak per month (demand charge)"

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=120)
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA zone the gate closure is set in")
    interval_minutes = models.PositiveSmallIntegerField(default=60, validators=[MinValueValidator(1)])
    gate_closure_local = models.TimeField(help_text="day-ahead gate closure, local time on the day before delivery")
    intraday_gate_minutes = models.PositiveIntegerField(default=60)
    min_bid_w = models.PositiveBigIntegerField(default=100_000)
    bid_increment_w = models.PositiveBigIntegerField(default=100_000, validators=[MinValueValidator(1)])
    price_unit = models.CharField(max_length=16, choices=PriceUnit.choices, default=PriceUnit.PER_MW_H)
    currency = models.CharField(max_length=3, default="USD")
    price_tick = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("0.01"))
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code

    @property
    def interval(self) -> timedelta:
        return timedelta(minutes=self.interval_minutes)


class DepotSite(models.Model):
    """A fleet depot behind one site meter; peak shaving keeps the meter's import under ``threshold_w``."""

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=120)
    organisation = models.ForeignKey(
        "fleet.Organisation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="depot_sites",
        help_text="owner; blank only for sites not yet assigned (operators see them)",
    )
    meter_id = models.CharField(max_length=64, blank=True)
    threshold_w = models.PositiveBigIntegerField(help_text="import the demand charge is set against")
    demand_charge = models.DecimalField(
        max_digits=12, decimal_places=4, help_text="currency per kW of monthly peak above the threshold"
    )
    currency = models.CharField(max_length=3, default="USD")
    node = models.CharField(max_length=64, default="default", help_text="grid node of the vehicles parked here")
    stations = models.ManyToManyField(
        "chargers.Station", blank=True, related_name="depot_sites", help_text="charging stations behind the site meter"
    )

    def __str__(self) -> str:
        return self.code


class Product(models.Model):
    """A service the fleet can sell. ``expected_*_activation`` is grid energy per W of capacity per hour that
    delivery is expected to move in each direction (regulation drift, reserve deployments); ``sustain_minutes``
    is how long full activation must be holdable, so that much energy is kept in reserve at all times."""

    class Kind(models.TextChoices):
        REGULATION = "regulation", "frequency regulation"
        RESERVE = "reserve", "spinning / contingency reserve"
        PEAK_SHAVING = "peak_shaving", "depot peak shaving"

    class Direction(models.TextChoices):
        UP = "up", "up (discharge / charge less)"
        DOWN = "down", "down (charge more)"
        SYMMETRIC = "symmetric", "symmetric (up and down)"

    operator = models.ForeignKey(MarketOperator, on_delete=models.PROTECT, related_name="products")
    code = models.SlugField(max_length=32)
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    direction = models.CharField(max_length=16, choices=Direction.choices)
    signal_period_s = models.PositiveIntegerField(null=True, blank=True, help_text="regulation signal period")
    response_time_s = models.PositiveIntegerField(default=600, help_text="time to full response")
    sustain_minutes = models.PositiveIntegerField(default=30)
    expected_up_activation = models.DecimalField(max_digits=6, decimal_places=4, default=Decimal("0"))
    expected_down_activation = models.DecimalField(max_digits=6, decimal_places=4, default=Decimal("0"))
    site = models.ForeignKey(DepotSite, null=True, blank=True, on_delete=models.PROTECT, related_name="products")
    active = models.BooleanField(default=True)
    settlement_minutes = models.PositiveSmallIntegerField(
        default=60,
        validators=[MinValueValidator(5)],
        help_text="settlement period, minutes (a divisor of 60): PJM settles and scores regulation per hour (60); the "
        "demo operator per 15 minutes (see vpp/demo_market.py)",
    )

    class Meta:
        ordering = ["operator__code", "code"]
        constraints = [
            models.UniqueConstraint(fields=["operator", "code"], name="markets_product_unique_code"),
            models.CheckConstraint(
                condition=~Q(kind="peak_shaving") | Q(site__isnull=False), name="markets_peak_shaving_has_site"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.operator.code}:{self.code}"


class Source(models.TextChoices):
    """Where a time-series value came from."""

    CSV = "csv", "CSV import"
    FORECAST = "forecast", "forecast model"
    OPERATOR = "operator", "market operator"
    MANUAL = "manual", "entered by hand"


class PricePoint(models.Model):
    """One belief about one interval's price: what ``source`` said at ``belief_time`` (time of knowledge).

    A later forecast or the cleared price is a new row, never an update: the optimiser reads, for each interval,
    the newest belief known at the time it runs.
    """

    class Kind(models.TextChoices):
        FORECAST = "forecast", "forecast"
        CLEARED = "cleared", "cleared (actual)"

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="prices")
    location = models.CharField(max_length=120, default="", blank=True, help_text="zone / subzone / node")
    interval_start = models.DateTimeField()
    interval_minutes = models.PositiveSmallIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=4)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    source = models.CharField(max_length=16, choices=Source.choices)
    source_ref = models.CharField(max_length=200, blank=True, help_text="file name / provider / model")
    belief_time = models.DateTimeField(help_text="when this value became known")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["interval_start", "-belief_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "location", "interval_start", "kind", "source", "source_ref", "belief_time"],
                name="markets_price_unique_belief",
            )
        ]
        indexes = [models.Index(fields=["product", "interval_start", "belief_time"])]

    def __str__(self) -> str:
        return f"{self.product_id} {self.interval_start:%Y-%m-%d %H:%M} {self.price} ({self.source}@{self.belief_time})"


class SiteLoadPoint(models.Model):
    """A belief about a depot's site-meter import (W) over one interval, without the fleet's flexibility."""

    site = models.ForeignKey(DepotSite, on_delete=models.CASCADE, related_name="load_points")
    interval_start = models.DateTimeField()
    interval_minutes = models.PositiveSmallIntegerField()
    load_w = models.BigIntegerField()
    source = models.CharField(max_length=16, choices=Source.choices)
    source_ref = models.CharField(max_length=200, blank=True)
    belief_time = models.DateTimeField()

    class Meta:
        ordering = ["interval_start", "-belief_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "interval_start", "source", "source_ref", "belief_time"],
                name="markets_site_load_unique_belief",
            )
        ]

    def __str__(self) -> str:
        return f"{self.site_id} {self.interval_start:%Y-%m-%d %H:%M} {self.load_w} W"


class BidProposal(models.Model):
    """One optimiser run for one operator and delivery window: the bids it proposed, the fleet flexibility
    envelope and prices it saw (``inputs``), and why (``explanation``). Claimed by the task that runs it with an
    atomic ``pending -> running`` update, so a retried or duplicated task never proposes twice."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    operator = models.ForeignKey(MarketOperator, on_delete=models.PROTECT, related_name="proposals")
    portfolio = models.CharField(max_length=64, default="default", help_text="fleet / node the bids are for")
    horizon_start = models.DateTimeField()
    horizon_end = models.DateTimeField()
    gate_closure = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    scheduler = models.CharField(max_length=32, blank=True)
    objective = models.DecimalField(max_digits=16, decimal_places=4, null=True, blank=True)
    solve_ms = models.PositiveIntegerField(null=True, blank=True)
    vehicles = models.PositiveIntegerField(default=0)
    clusters = models.PositiveIntegerField(default=0)
    inputs = models.JSONField(default=dict, blank=True, help_text="envelope, prices and settings the run used")
    explanation = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-horizon_start", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["operator", "portfolio", "horizon_start"], name="markets_one_proposal_per_window"
            )
        ]

    def __str__(self) -> str:
        return f"{self.operator_id}/{self.portfolio} {self.horizon_start:%Y-%m-%d %H:%M} {self.status}"


#: The permission (``Bid.Meta.permissions``) to prepare, approve and submit bids: pages and REST writes need it.
BID_ADMIN_PERM = "markets.bid_admin"


class Bid(models.Model):
    """One offer: ``quantity_w`` of one product over one interval at ``price`` (operator's unit and currency).

    ``status`` only changes through ``markets.services.bids.bid_transition`` (atomic conditional update + audit row).
    ``version`` increases on every change so an edit made on a stale page is refused instead of overwriting.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "draft"
        APPROVED = "approved", "approved"
        SUBMITTED = "submitted", "submitted"
        AWARDED = "awarded", "awarded"
        PARTIALLY_AWARDED = "partially_awarded", "partially awarded"
        REJECTED = "rejected", "rejected"
        DELIVERED = "delivered", "delivered"
        SETTLED = "settled", "settled"

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="bids")
    proposal = models.ForeignKey(BidProposal, null=True, blank=True, on_delete=models.SET_NULL, related_name="bids")
    portfolio = models.CharField(max_length=64, default="default")
    interval_start = models.DateTimeField()
    interval_end = models.DateTimeField()
    quantity_w = models.PositiveBigIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=4)
    proposed_quantity_w = models.PositiveBigIntegerField(null=True, blank=True, help_text="what the optimiser said")
    proposed_price = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    forecast_price = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT, db_index=True)
    version = models.PositiveIntegerField(default=1)
    external_ref = models.CharField(max_length=64, unique=True, help_text="id used in CSV exports / award imports")
    simulated = models.BooleanField(default=False, help_text="generated by the demo's simulated history, not traded")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["interval_start", "product_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "portfolio", "interval_start"], name="markets_one_bid_per_product_interval"
            ),
            models.CheckConstraint(condition=Q(interval_end__gt=F("interval_start")), name="markets_bid_interval"),
        ]
        permissions = [("bid_admin", "Can prepare, approve and submit market bids")]

    def __str__(self) -> str:
        return f"{self.external_ref} {self.product_id} {self.interval_start:%Y-%m-%d %H:%M} {self.quantity_w} W"


class Award(models.Model):
    """What the market accepted for one bid: ``awarded_w`` (0 = rejected) at ``clearing_price``.

    Dispatch computes fleet setpoints from ``awarded_w`` per product and interval; settlement pays
    ``awarded_w`` x ``clearing_price`` x interval hours x performance.
    """

    class Source(models.TextChoices):
        SIMULATED = "simulated", "simulated market operator"
        CSV = "csv", "award file import"
        SELF = "self", "self-scheduled (depot)"

    bid = models.OneToOneField(Bid, on_delete=models.PROTECT, related_name="award")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="awards")
    portfolio = models.CharField(max_length=64, default="default")
    interval_start = models.DateTimeField()
    interval_end = models.DateTimeField()
    awarded_w = models.PositiveBigIntegerField()
    clearing_price = models.DecimalField(max_digits=14, decimal_places=4)
    source = models.CharField(max_length=16, choices=Source.choices)
    source_ref = models.CharField(max_length=200, blank=True)
    received_at = models.DateTimeField()
    simulated = models.BooleanField(default=False, help_text="generated by the demo's simulated history, not traded")

    class Meta:
        ordering = ["interval_start", "product_id"]
        indexes = [models.Index(fields=["interval_start", "interval_end"])]

    def __str__(self) -> str:
        return f"award {self.bid_id}: {self.awarded_w} W at {self.clearing_price}"

    @property
    def interval_hours(self) -> Decimal:
        return Decimal((self.interval_end - self.interval_start).total_seconds()) / Decimal(3600)


class BidEvent(models.Model):
    """Audit trail: who changed which bid, when, from what to what. Append-only."""

    bid = models.ForeignKey(Bid, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    actor_label = models.CharField(max_length=64, help_text="username, or system:<component> for automation")
    action = models.CharField(max_length=32)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.bid_id} {self.action} by {self.actor_label} at {self.at:%Y-%m-%d %H:%M:%S}"


# Regulation signal, scores and settlement (the settlement engineer's models, kept in their own module).
# Peak shaving: site meters and readings, demand-charge tariffs, plans and settlements.
from markets.peak.models import *  # noqa: E402, F403
from markets.regulation.models import *  # noqa: E402, F403

# Synchronized reserve event performance (markets/reserve/).
from markets.reserve.models import *  # noqa: E402, F403
