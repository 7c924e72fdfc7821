"""Regulation signal, performance scores and settlement: the rows an ISO/RTO auditor traces revenue through.

Imported by ``markets/models.py`` (so these are ``markets`` models). Conventions as in the rest of ``markets``:
power integer W, energy integer Wh, money ``Decimal``, UTC. Sign convention of regulation (PJM): a positive signal
asks for regulation *up* -- inject more / consume less -- so a vehicle's response is ``basepoint_w - power_w`` with
power positive when charging (``fleet.numerics.snapshot``). Time series carry their source and time of knowledge.

Nothing here computes: the services of this package do, with the pure code in ``scoring.py`` and ``settlement.py``.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

__all__ = [
    "EnergyPrice",
    "PerformanceScoreRecord",
    "RegulationBasepoint",
    "RegulationPrice",
    "RegulationSignal",
    "Settlement",
    "SettlementLine",
    "SignalSource",
]


class SignalSource(models.TextChoices):
    UTILITY_API = "utility_api", "utility / operator over REST"
    WEBSOCKET = "websocket", "utility / operator over WebSocket"
    FILE = "file", "replayed from a signal file"
    SIMULATED = "simulated", "simulated market"


class RegulationSignal(models.Model):
    """One value of a product's regulation signal (normalised -1..1), in force from ``at`` until the next one.

    One value per product, portfolio and instant: a retransmission of the same value is a no-op, a different value
    for an instant already known is refused (the operator's signal is not rewritten after the fact).
    """

    product = models.ForeignKey("markets.Product", on_delete=models.PROTECT, related_name="signal_samples")
    portfolio = models.CharField(max_length=64, default="default")
    at = models.DateTimeField(help_text="instant the operator's value applies from (UTC)")
    value = models.DecimalField(
        max_digits=7, decimal_places=5, validators=[MinValueValidator(Decimal(-1)), MaxValueValidator(Decimal(1))]
    )
    source = models.CharField(max_length=16, choices=SignalSource.choices)
    source_ref = models.CharField(max_length=200, blank=True, help_text="sender / file name")
    belief_time = models.DateTimeField(help_text="when the aggregator received it")
    received_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)

    class Meta:
        ordering = ["product", "portfolio", "at"]
        constraints = [
            models.UniqueConstraint(fields=["product", "portfolio", "at"], name="markets_signal_one_value_per_instant"),
            models.CheckConstraint(condition=Q(value__gte=-1) & Q(value__lte=1), name="markets_signal_normalised"),
        ]
        permissions = [("submit_regulation_signal", "Can send regulation signal values (utility / operator)")]

    def __str__(self) -> str:
        return f"{self.product_id}/{self.portfolio} {self.at:%Y-%m-%dT%H:%M:%SZ} {self.value}"


class ReserveDeployment(models.Model):
    """A reserve event called on a portfolio: ``power_w`` of response (less charging / more discharging) asked for
    from ``start`` to ``end``.

    Dispatched by itself (:mod:`vpp.dispatch.reserve`: fleet power at the start minus ``power_w``, held to the end,
    released after) and, while regulation signals flow for the portfolio, added to each regulation setpoint
    (:func:`vpp.dispatch.dispatcher.fleet_setpoint_w`). ``product`` is the reserve product whose award the event
    deploys (measured and settled, :mod:`markets.reserve`); an event without one is an offset only. One row per
    operator event: a retransmission is a no-op, a different event under the same reference is refused.
    """

    product = models.ForeignKey(
        "markets.Product",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reserve_events",
        help_text="reserve product deployed (measured and settled); blank: an offset on regulation only",
    )
    portfolio = models.CharField(max_length=64, default="default")
    event_id = models.CharField(max_length=100, help_text="the operator's reference for the event")
    power_w = models.PositiveBigIntegerField(help_text="extra discharge asked for (W)")
    start = models.DateTimeField()
    end = models.DateTimeField()
    source = models.CharField(max_length=16, choices=SignalSource.choices)
    belief_time = models.DateTimeField(help_text="when the aggregator received it")
    received_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    run_node = models.CharField(
        max_length=32, blank=True, default="", help_text="server process dispatching the event (its lease holder)"
    )
    run_lease_until = models.DateTimeField(
        null=True, blank=True, help_text="the dispatching process renews this; once past, another process takes over"
    )
    baseline_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="when its baseline is measured, if before its start (a later part of one utility event: the "
        "event's first start, so the baseline never includes the event's own response)",
    )

    class Meta:
        ordering = ["-start"]
        constraints = [
            models.UniqueConstraint(fields=["portfolio", "event_id"], name="markets_reserve_one_row_per_event"),
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="markets_reserve_ends_after_start"),
            models.CheckConstraint(condition=Q(power_w__gt=0), name="markets_reserve_power_positive"),
        ]
        indexes = [models.Index(fields=["portfolio", "end"], name="markets_reserve_portfolio_end")]

    def __str__(self) -> str:
        return f"{self.portfolio} {self.event_id}: {self.power_w} W {self.start:%Y-%m-%dT%H:%M:%SZ}-{self.end:%H:%M}"


class RegulationBasepoint(models.Model):
    """The fleet's basepoint (W, + charging) for a product and portfolio from ``at`` on, as dispatch set it.

    Regulation response = basepoint - metered fleet power. Written by dispatch when the basepoint changes.
    """

    product = models.ForeignKey("markets.Product", on_delete=models.PROTECT, related_name="basepoints")
    portfolio = models.CharField(max_length=64, default="default")
    at = models.DateTimeField()
    basepoint_w = models.BigIntegerField()
    source = models.CharField(max_length=32, default="dispatch")
    belief_time = models.DateTimeField()

    class Meta:
        ordering = ["product", "portfolio", "at"]
        constraints = [
            models.UniqueConstraint(fields=["product", "portfolio", "at"], name="markets_one_basepoint_per_instant")
        ]

    def __str__(self) -> str:
        return f"{self.product_id}/{self.portfolio} {self.at:%Y-%m-%dT%H:%M:%SZ} {self.basepoint_w} W"


class RegulationPrice(models.Model):
    """A belief about an hour's regulation clearing: capacity (RMCCP) and performance (RMPCP) prices in $/MW-h
    and the mileage ratio. The newest belief known when settling is used; the award's clearing price stands for
    the capacity price when ``capacity_price`` is empty."""

    product = models.ForeignKey("markets.Product", on_delete=models.PROTECT, related_name="regulation_prices")
    interval_start = models.DateTimeField()
    interval_minutes = models.PositiveSmallIntegerField(default=60)
    capacity_price = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    performance_price = models.DecimalField(max_digits=14, decimal_places=4)
    mileage_ratio = models.DecimalField(max_digits=10, decimal_places=4, validators=[MinValueValidator(Decimal(0))])
    source = models.CharField(max_length=16, default="operator")
    source_ref = models.CharField(max_length=200, blank=True)
    belief_time = models.DateTimeField()

    class Meta:
        ordering = ["interval_start", "-belief_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "interval_start", "source", "belief_time"], name="markets_regprice_unique_belief"
            )
        ]

    def __str__(self) -> str:
        return f"{self.product_id} {self.interval_start:%Y-%m-%d %H:%M} RMPCP {self.performance_price}"


class EnergyPrice(models.Model):
    """A belief about the energy price ($/MWh) at a location over one interval (e.g. 5-min real-time LMP)."""

    operator = models.ForeignKey("markets.MarketOperator", on_delete=models.PROTECT, related_name="energy_prices")
    location = models.CharField(max_length=120, default="", blank=True)
    interval_start = models.DateTimeField()
    interval_minutes = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    price = models.DecimalField(max_digits=14, decimal_places=4)
    source = models.CharField(max_length=16, default="operator")
    source_ref = models.CharField(max_length=200, blank=True)
    belief_time = models.DateTimeField()

    class Meta:
        ordering = ["interval_start", "-belief_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["operator", "location", "interval_start", "source", "belief_time"],
                name="markets_energyprice_unique_belief",
            )
        ]
        indexes = [models.Index(fields=["operator", "location", "interval_start"], name="energyprice_op_loc_start")]

    def __str__(self) -> str:
        return f"{self.operator_id}/{self.location} {self.interval_start:%Y-%m-%d %H:%M} {self.price}/MWh"


class PerformanceScoreRecord(models.Model):
    """A performance score of one product and portfolio over one period (an hour, or a qualification test)."""

    class Kind(models.TextChoices):
        HOURLY = "hourly", "hourly (391 rows, 360 scored)"
        INTERVAL = "interval", "settlement period shorter than an hour (its rows + 31 look-ahead)"
        TEST = "test", "qualification / replay test"

    product = models.ForeignKey("markets.Product", on_delete=models.PROTECT, related_name="performance_scores")
    portfolio = models.CharField(max_length=64, default="default")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    period_start = models.DateTimeField(help_text="first scored row")
    period_end = models.DateTimeField(help_text="end of the scored rows (look-ahead rows follow it)")
    capacity_w = models.PositiveBigIntegerField(help_text="AREG the signal was scaled by")
    accuracy = models.DecimalField(max_digits=9, decimal_places=6)
    delay = models.DecimalField(max_digits=9, decimal_places=6)
    precision = models.DecimalField(max_digits=9, decimal_places=6)
    composite = models.DecimalField(max_digits=9, decimal_places=6)
    passed = models.BooleanField()
    rows = models.PositiveIntegerField(help_text="10-s rows used, look-ahead included")
    signal_mileage = models.DecimalField(max_digits=12, decimal_places=5, help_text="sum |delta s|, per unit")
    signal_samples = models.PositiveIntegerField()
    meter_values = models.PositiveIntegerField(help_text="distinct power readings used")
    duplicates_ignored = models.PositiveIntegerField(help_text="retransmitted readings not counted")
    stations = models.PositiveIntegerField()
    inputs = models.JSONField(default=dict, blank=True, help_text="basepoint, alignment and other choices made")
    computed_at = models.DateTimeField()
    simulated = models.BooleanField(default=False, help_text="scored on the demo's simulated history")

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "portfolio", "kind", "period_start"], name="markets_one_score_per_period"
            ),
            models.CheckConstraint(condition=Q(period_end__gt=F("period_start")), name="markets_score_period"),
        ]

    def __str__(self) -> str:
        return f"{self.product_id}/{self.portfolio} {self.kind} {self.period_start:%Y-%m-%d %H:%M} {self.composite}"


class Settlement(models.Model):
    """One award settled over one period (an hour): the rounded components, the exact figures behind them and
    the prices and score used. Vehicle lines add up to it to the cent."""

    award = models.ForeignKey("markets.Award", on_delete=models.PROTECT, related_name="settlements")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    score = models.ForeignKey(
        PerformanceScoreRecord, null=True, blank=True, on_delete=models.PROTECT, related_name="settlements"
    )
    score_value = models.DecimalField(max_digits=9, decimal_places=6)
    awarded_w = models.PositiveBigIntegerField()
    capacity_price = models.DecimalField(max_digits=14, decimal_places=4)
    performance_price = models.DecimalField(max_digits=14, decimal_places=4)
    mileage_ratio = models.DecimalField(max_digits=10, decimal_places=4)
    capacity_credit = models.DecimalField(max_digits=14, decimal_places=2)
    performance_credit = models.DecimalField(max_digits=14, decimal_places=2)
    energy_amount = models.DecimalField(max_digits=14, decimal_places=2)
    degradation_cost = models.DecimalField(max_digits=14, decimal_places=2)
    penalty = models.DecimalField(
        max_digits=14, decimal_places=2, default=0, help_text="reserve shortfall penalties charged (a cost)"
    )
    net = models.DecimalField(max_digits=14, decimal_places=2)
    exact = models.JSONField(help_text="unrounded components as decimal strings")
    import_wh = models.BigIntegerField()
    export_wh = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="USD")
    computed_at = models.DateTimeField()
    simulated = models.BooleanField(default=False, help_text="settled on the demo's simulated history")

    class Meta:
        ordering = ["-period_start", "award_id"]
        constraints = [
            models.UniqueConstraint(fields=["award", "period_start"], name="markets_one_settlement_per_award_period")
        ]

    def __str__(self) -> str:
        return f"settlement award {self.award_id} {self.period_start:%Y-%m-%d %H:%M} net {self.net}"


class SettlementLine(models.Model):
    """One vehicle's (charge point's) share of a settlement, with the meter values it was computed from.

    The vehicle is the one plugged in at the charge point for most of the period (``fleet.PlugSession``); the owner
    is its fleet's organisation.

    ``meter_first`` / ``meter_last`` bound the power readings used; ``meter_count`` and ``meter_digest`` (SHA-256
    of their ids in order) let an auditor check the set is unchanged. ``register_*`` are the energy register
    readings the reconciliation compares against.
    """

    settlement = models.ForeignKey(Settlement, on_delete=models.CASCADE, related_name="lines")
    station = models.ForeignKey("chargers.Station", on_delete=models.PROTECT, related_name="settlement_lines")
    evse_id = models.PositiveIntegerField()
    vehicle = models.ForeignKey(
        "fleet.Vehicle", null=True, blank=True, on_delete=models.PROTECT, related_name="settlement_lines"
    )
    owner = models.ForeignKey(
        "fleet.Organisation", null=True, blank=True, on_delete=models.PROTECT, related_name="settlement_lines"
    )
    vehicle_ref = models.CharField(max_length=140, help_text="vehicle name, or the session's id token if unknown")
    owner_ref = models.CharField(max_length=140, help_text="fleet owner's name; 'unassigned' if unknown")
    capacity_credit = models.DecimalField(max_digits=14, decimal_places=2)
    performance_credit = models.DecimalField(max_digits=14, decimal_places=2)
    energy_amount = models.DecimalField(max_digits=14, decimal_places=2)
    degradation_cost = models.DecimalField(max_digits=14, decimal_places=2)
    penalty = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    net = models.DecimalField(max_digits=14, decimal_places=2)
    response_wh = models.BigIntegerField()
    import_wh = models.BigIntegerField()
    export_wh = models.BigIntegerField()
    pack_throughput_wh = models.BigIntegerField()
    meter_count = models.PositiveIntegerField()
    duplicates_ignored = models.PositiveIntegerField(default=0)
    meter_first = models.ForeignKey(
        "chargers.MeterValue", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    meter_last = models.ForeignKey(
        "chargers.MeterValue", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    meter_digest = models.CharField(max_length=64)

    class Meta:
        ordering = ["settlement", "station", "evse_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["settlement", "station", "evse_id"], name="markets_one_line_per_chargepoint"
            )
        ]

    def __str__(self) -> str:
        return f"{self.settlement_id} {self.station_id}/{self.evse_id} {self.vehicle_ref} net {self.net}"
