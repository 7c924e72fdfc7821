"""Peak shaving rows: site meters and their readings, demand-charge tariffs, plans and settlements.

Imported by ``markets/models.py`` (so these are ``markets`` models). Power integer W (site import positive, export
negative), money ``Decimal`` in the tariff's currency, times UTC; the tariff's billing period and time-of-use windows
are read in its own time zone. Time series carry their source and time of knowledge (``belief_time``).
Nothing here computes: ``markets/peak/`` services do, with the pure code in ``tariff.py``, ``forecast.py`` and
``settlement.py``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

__all__ = [
    "DemandCharge",
    "DemandTariff",
    "MeterSource",
    "PeakPlan",
    "PeakSettlement",
    "PeakSettlementLine",
    "SiteDataUpload",
    "SiteMeter",
    "SiteMeterReading",
]


class MeterSource(models.TextChoices):
    """Where a site-meter reading came from."""

    OCPP = "ocpp", "station main meter (OCPP MeterValues, EVSE 0)"
    MODBUS = "modbus", "SunSpec meter read by an edge agent (OCPP MeterValues, EVSE 0)"
    CSV = "csv", "interval data uploaded as CSV"
    JSON = "json", "interval data posted as JSON"


class SiteMeter(models.Model):
    """The meter at a depot's grid connection. ``ocpp`` and ``modbus`` meters report as EVSE 0 of ``station``
    (a Modbus meter through the edge agent that reads it); ``upload`` meters are the utility's interval data."""

    class Kind(models.TextChoices):
        OCPP = "ocpp", "station main meter over OCPP"
        MODBUS = "modbus", "Modbus / SunSpec meter read by an edge agent"
        UPLOAD = "upload", "uploaded interval data (CSV / JSON)"

    site = models.ForeignKey("markets.DepotSite", on_delete=models.CASCADE, related_name="meters")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    station = models.ForeignKey(
        "chargers.Station", null=True, blank=True, on_delete=models.PROTECT, related_name="site_meters"
    )
    evse_id = models.PositiveIntegerField(default=0, help_text="0: the station's main meter")
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["site", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="upload") | Q(station__isnull=False), name="markets_site_meter_has_station"
            ),
            models.UniqueConstraint(
                fields=["station", "evse_id"], condition=Q(station__isnull=False), name="markets_one_site_per_meter"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site_id} {self.kind} {self.station_id or ''}/{self.evse_id}"

    @property
    def source(self) -> str:
        return MeterSource.MODBUS if self.kind == self.Kind.MODBUS else MeterSource.OCPP


class SiteMeterReading(models.Model):
    """One belief about the site's net import: an instantaneous sample (``interval_s`` 0) or the mean over
    ``[start, start + interval_s)`` (interval data). A corrected upload is a new belief, never an update."""

    site = models.ForeignKey("markets.DepotSite", on_delete=models.CASCADE, related_name="meter_readings")
    start = models.DateTimeField(help_text="sample instant, or interval start (UTC)")
    interval_s = models.PositiveIntegerField(default=0, help_text="0: instantaneous power; else the interval")
    import_w = models.BigIntegerField(help_text="net import at the grid connection, W (export negative)")
    source = models.CharField(max_length=8, choices=MeterSource.choices)
    source_ref = models.CharField(max_length=200, blank=True, help_text="station/EVSE, file name or uploader")
    belief_time = models.DateTimeField(help_text="when the aggregator learnt it")

    class Meta:
        ordering = ["site", "start"]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "start", "interval_s", "source", "source_ref", "belief_time"],
                name="markets_site_reading_unique_belief",
            )
        ]
        indexes = [models.Index(fields=["site", "start"], name="site_reading_site_start")]

    def __str__(self) -> str:
        return f"{self.site_id} {self.start:%Y-%m-%d %H:%M:%S} {self.import_w} W ({self.source})"


class SiteDataUpload(models.Model):
    """Audit trail of interval data sent for a site (API or command line), refusals included with their errors.
    The readings an accepted upload stored name it in their ``source_ref`` (``upload <id> by <actor>``). Rows are
    never edited."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted", "accepted (stored; unchanged intervals not stored again)"
        REFUSED = "refused", "refused (nothing stored; errors given)"

    site = models.ForeignKey("markets.DepotSite", on_delete=models.CASCADE, related_name="data_uploads")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="site_data_uploads"
    )
    actor_label = models.CharField(max_length=150)
    source = models.CharField(max_length=8, choices=MeterSource.choices)
    filename = models.CharField(max_length=200, blank=True)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the body as received")
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    readings = models.PositiveIntegerField(default=0, help_text="intervals in the upload")
    created = models.PositiveIntegerField(default=0, help_text="new beliefs stored")
    errors = models.JSONField(default=list, blank=True, help_text="[where, what] per refused line / pointer")
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.site_id} {self.source} by {self.actor_label} ({self.outcome}, {self.created} new)"


class DemandTariff(models.Model):
    """A site's demand-charge tariff: each billing period (a month starting on ``billing_day`` at midnight local
    time) every charge bills its price per kW of the highest ``demand_interval_minutes`` mean import in its window.
    The newest tariff whose ``valid_from`` is on or before a period's start applies to it."""

    site = models.ForeignKey("markets.DepotSite", on_delete=models.CASCADE, related_name="tariffs")
    name = models.CharField(max_length=120)
    currency = models.CharField(max_length=3, default="USD")
    timezone = models.CharField(max_length=64, default="America/New_York", help_text="IANA zone of the bill")
    demand_interval_minutes = models.PositiveSmallIntegerField(
        default=15, validators=[MinValueValidator(1), MaxValueValidator(60)]
    )
    billing_day = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(28)], help_text="day of month a period starts"
    )
    valid_from = models.DateField()

    class Meta:
        ordering = ["site", "-valid_from"]
        constraints = [
            models.UniqueConstraint(fields=["site", "valid_from"], name="markets_one_tariff_per_site_start"),
            models.CheckConstraint(
                condition=Q(demand_interval_minutes__gte=1) & Q(billing_day__gte=1) & Q(billing_day__lte=28),
                name="markets_tariff_sane",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site_id} {self.name} from {self.valid_from}"


class DemandCharge(models.Model):
    """One component of a tariff: ``price_per_kw`` of the billing period's peak within a time-of-use window
    (local ``weekdays``, Monday = 0, and ``[window_start, window_end)``; no window: every interval)."""

    tariff = models.ForeignKey(DemandTariff, on_delete=models.CASCADE, related_name="charges")
    name = models.CharField(max_length=80)
    price_per_kw = models.DecimalField(max_digits=12, decimal_places=4, validators=[MinValueValidator(0)])
    weekdays = models.CharField(max_length=7, default="0123456", help_text="local weekdays, Monday = 0")
    window_start = models.TimeField(null=True, blank=True)
    window_end = models.TimeField(null=True, blank=True)

    class Meta:
        ordering = ["tariff", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(window_start__isnull=True) & Q(window_end__isnull=True))
                | (
                    Q(window_start__isnull=False)
                    & Q(window_end__isnull=False)
                    & Q(window_start__lt=models.F("window_end"))
                ),
                name="markets_demand_charge_window",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.price_per_kw}/kW"


class PeakPlan(models.Model):
    """What the optimiser found the fleet can hold the site's import to over ``[start, end)``: real-time dispatch
    keeps the metered import under ``threshold_w``. The newest plan covering an instant is the one in force."""

    site = models.ForeignKey("markets.DepotSite", on_delete=models.CASCADE, related_name="peak_plans")
    start = models.DateTimeField()
    end = models.DateTimeField()
    threshold_w = models.BigIntegerField(help_text="import cap dispatch holds the site to")
    forecast_peak_w = models.BigIntegerField(help_text="forecast peak of the site without the fleet")
    billed_peak_w = models.BigIntegerField(default=0, help_text="billing period's metered peak so far (free headroom)")
    planned_shave_w = models.BigIntegerField(help_text="largest discharge the plan needs of the fleet")
    step_s = models.PositiveIntegerField(default=900, help_text="length of each step of the lists below")
    load_w = models.JSONField(default=list, blank=True, help_text="forecast load without the fleet per step (W)")
    billed = models.JSONField(default=list, blank=True, help_text="per step: whether a demand charge bills it")
    fleet_w = models.JSONField(
        default=list, blank=True, help_text="planned net fleet power per step (W, + charging): the charging schedule"
    )
    vehicles = models.PositiveIntegerField()
    forecast_ref = models.CharField(max_length=200)
    explanation = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["site", "-created_at"]
        indexes = [models.Index(fields=["site", "start", "end"], name="peak_plan_site_window")]

    def __str__(self) -> str:
        return f"{self.site_id} {self.start:%Y-%m-%d %H:%M} cap {self.threshold_w} W"


class PeakSettlement(models.Model):
    """The demand charge avoided over one billing period: metered site import against the counterfactual without
    the fleet (metered import + the fleet's discharge at the site), per charge of the tariff. Lines add up to the
    total to the cent; ``intervals`` holds every demand interval's figures, and the digests the readings used."""

    site = models.ForeignKey("markets.DepotSite", on_delete=models.PROTECT, related_name="peak_settlements")
    tariff = models.ForeignKey(DemandTariff, on_delete=models.PROTECT, related_name="settlements")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3)
    metered_charge = models.DecimalField(max_digits=14, decimal_places=2)
    counterfactual_charge = models.DecimalField(max_digits=14, decimal_places=2)
    avoided = models.DecimalField(max_digits=14, decimal_places=2)
    intervals = models.JSONField(help_text="[start, metered W, fleet discharge W, counterfactual W] per interval")
    intervals_expected = models.PositiveIntegerField()
    intervals_metered = models.PositiveIntegerField()
    site_readings = models.PositiveIntegerField()
    site_digest = models.CharField(max_length=64, help_text="SHA-256 of the site reading ids used, in order")
    fleet_readings = models.PositiveIntegerField()
    fleet_digest = models.CharField(max_length=64, help_text="SHA-256 of the fleet meter value ids used, in order")
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["site", "-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["site", "period_start"], name="markets_one_peak_settlement_per_period")
        ]

    def __str__(self) -> str:
        return f"{self.site_id} {self.period_start:%Y-%m} avoided {self.avoided}"


class PeakSettlementLine(models.Model):
    """One demand charge of a settlement: the peaks with and without the fleet and the money of each."""

    settlement = models.ForeignKey(PeakSettlement, on_delete=models.CASCADE, related_name="lines")
    charge = models.ForeignKey(DemandCharge, on_delete=models.PROTECT, related_name="+")
    charge_name = models.CharField(max_length=80)
    price_per_kw = models.DecimalField(max_digits=12, decimal_places=4)
    metered_peak_w = models.BigIntegerField()
    metered_peak_at = models.DateTimeField(null=True, blank=True)
    counterfactual_peak_w = models.BigIntegerField()
    counterfactual_peak_at = models.DateTimeField(null=True, blank=True)
    metered_amount = models.DecimalField(max_digits=14, decimal_places=2)
    counterfactual_amount = models.DecimalField(max_digits=14, decimal_places=2)
    avoided = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        ordering = ["settlement", "charge_id"]

    def __str__(self) -> str:
        return f"{self.settlement_id} {self.charge_name} avoided {self.avoided}"
