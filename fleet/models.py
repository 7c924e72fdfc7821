"""Fleet data: organisations own fleets, fleets own vehicles; departure plans, plug-in sessions and SoC beliefs.

Energy in integer Wh, power in integer W, timestamps UTC. Rules across rows live in ``fleet/services.py``; model
methods here only answer single-row questions.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

from fleet.numerics.degradation import DegradationParams


def _default_floor_pct() -> int:
    return int(settings.FLEET_DEFAULT_MOBILITY_FLOOR_PCT)


_PCT = [MinValueValidator(0), MaxValueValidator(100)]
_FRACTION = [MinValueValidator(0.0), MaxValueValidator(1.0)]


class Organisation(models.Model):
    """A fleet operator: owns its depots, stations, fleets and vehicles. Its members see and act on those only."""

    DEFAULT_SLUG = "default"  # where data from before tenancy was put by migration 0004

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    """What a member may do in an organisation. Operators (the aggregator's staff) are not members: they are Django
    staff and see every organisation."""

    FLEET_MANAGER = "fleet_manager", "fleet manager"
    BIDDING_ADMIN = "bidding_admin", "bidding admin"
    UTILITY = "utility", "utility"


class Membership(models.Model):
    """A user's role in one organisation (a user may belong to several, with a role in each)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organisation__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "organisation"], name="membership_unique_user_org")]

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}) in {self.organisation}"


class StationOwnership(models.Model):
    """Which organisation owns a charging station. Kept here, not on ``chargers.Station``: the CSMS knows no
    organisations; the layers above scope every station read and command through this row."""

    station = models.OneToOneField(
        "chargers.Station", on_delete=models.CASCADE, primary_key=True, related_name="ownership"
    )
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="station_ownerships")
    assigned_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.station_id} -> {self.organisation}"


class Fleet(models.Model):
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="fleets")
    name = models.CharField(max_length=120)
    mobility_floor_pct = models.PositiveSmallIntegerField(
        default=_default_floor_pct, validators=_PCT, help_text="no discharge below this SoC (%), unless a vehicle says"
    )
    default_node = models.CharField(max_length=64, default="default", help_text="market location / grid node")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA zone of the weekly schedules")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organisation__name", "name"]
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="fleet_unique_name")]

    def __str__(self) -> str:
        return f"{self.organisation} / {self.name}"


class Vehicle(models.Model):
    """One car. Identifiers match it to a charging session: the id token it presents, its EVCCID, or its VIN."""

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="vehicles")
    name = models.CharField(max_length=120, help_text="fleet's label, e.g. the plate")
    vin = models.CharField(max_length=17, blank=True, db_index=True)
    evccid = models.CharField(max_length=64, blank=True, db_index=True, help_text="ISO 15118 EVCCID (MAC)")
    id_token = models.CharField(max_length=255, blank=True, db_index=True, help_text="token presented at the charger")
    model = models.CharField(max_length=80)
    usable_capacity_wh = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    ac_max_charge_w = models.PositiveIntegerField()
    ac_max_discharge_w = models.PositiveIntegerField(default=0)
    dc_max_charge_w = models.PositiveIntegerField(default=0)
    dc_max_discharge_w = models.PositiveIntegerField(default=0)
    charge_efficiency = models.FloatField(default=0.92, validators=_FRACTION, help_text="grid -> pack")
    discharge_efficiency = models.FloatField(default=0.92, validators=_FRACTION, help_text="pack -> grid")
    state_of_health = models.FloatField(default=1.0, validators=_FRACTION)
    equivalent_full_cycles = models.FloatField(default=0.0, validators=[MinValueValidator(0.0)])
    cycles_today = models.FloatField(default=0.0, help_text="equivalent full cycles on cycles_date (UTC)")
    cycles_date = models.DateField(null=True, blank=True)
    pack_temperature_c = models.FloatField(default=25.0, help_text="newest pack temperature known (degC)")
    pack_temperature_at = models.DateTimeField(
        null=True, blank=True, help_text="when pack_temperature_c was measured (blank: never reported)"
    )
    pack_cost_per_kwh = models.DecimalField(
        max_digits=8, decimal_places=2, default=Decimal("150.00"), help_text="pack replacement cost, $ per kWh"
    )
    cycle_life = models.PositiveIntegerField(default=3000, help_text="rated cycles at rated_dod")
    rated_dod = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.800"),
        validators=[MinValueValidator(Decimal("0.01")), MaxValueValidator(Decimal("1"))],
    )
    mobility_floor_pct = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=_PCT, help_text="overrides the fleet's floor when set"
    )
    node = models.CharField(max_length=64, blank=True, help_text="blank: the fleet's default node")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["fleet", "name"]
        constraints = [
            models.UniqueConstraint(fields=["vin"], condition=~models.Q(vin=""), name="vehicle_unique_vin"),
            models.UniqueConstraint(fields=["evccid"], condition=~models.Q(evccid=""), name="vehicle_unique_evccid"),
            models.UniqueConstraint(
                fields=["id_token"], condition=~models.Q(id_token=""), name="vehicle_unique_id_token"
            ),
            models.CheckConstraint(
                condition=models.Q(charge_efficiency__gt=0, charge_efficiency__lte=1)
                & models.Q(discharge_efficiency__gt=0, discharge_efficiency__lte=1),
                name="vehicle_efficiency_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.model})"

    @property
    def effective_floor_pct(self) -> int:
        return self.mobility_floor_pct if self.mobility_floor_pct is not None else self.fleet.mobility_floor_pct

    @property
    def floor_wh(self) -> int:
        return self.usable_capacity_wh * self.effective_floor_pct // 100

    def degradation_params(self) -> DegradationParams:
        return DegradationParams(
            pack_cost_per_kwh=self.pack_cost_per_kwh, cycle_life=self.cycle_life, rated_dod=self.rated_dod
        )

    @property
    def effective_node(self) -> str:
        return self.node or self.fleet.default_node


class PlanSource(models.TextChoices):
    STATION = "station", "station (ISO 15118 / NotifyEVChargingNeeds)"
    FLEET_MANAGER = "fleet_manager", "fleet manager"
    SCHEDULE = "schedule", "weekly schedule"


class DeparturePlan(models.Model):
    """When a vehicle must leave and with how much energy. Kept as history: the newest known plan wins."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="departure_plans")
    source = models.CharField(max_length=16, choices=PlanSource.choices)
    departure_at = models.DateTimeField()
    target_soc_pct = models.PositiveSmallIntegerField(validators=_PCT)
    known_at = models.DateTimeField(help_text="when the aggregator learned it")
    session = models.ForeignKey("PlugSession", null=True, blank=True, on_delete=models.SET_NULL, related_name="plans")

    class Meta:
        ordering = ["-known_at"]
        indexes = [models.Index(fields=["vehicle", "-known_at"], name="plan_vehicle_known")]

    def __str__(self) -> str:
        return f"{self.vehicle} leaves {self.departure_at:%Y-%m-%d %H:%M} at {self.target_soc_pct} % ({self.source})"


class WeeklyDeparture(models.Model):
    """A standing departure: every ``weekday`` (0 = Monday) at ``departure_time`` in the fleet's time zone."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="weekly_departures")
    weekday = models.PositiveSmallIntegerField(validators=[MaxValueValidator(6)])
    departure_time = models.TimeField()
    target_soc_pct = models.PositiveSmallIntegerField(validators=_PCT)

    class Meta:
        ordering = ["vehicle", "weekday"]
        constraints = [models.UniqueConstraint(fields=["vehicle", "weekday"], name="weekly_departure_unique_day")]

    def __str__(self) -> str:
        return f"{self.vehicle} day {self.weekday} {self.departure_time:%H:%M} -> {self.target_soc_pct} %"


class PlugSession(models.Model):
    """A vehicle plugged in at a station's EVSE, from matching until unplugged; carries the EV's reported limits."""

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="sessions")
    station_id = models.CharField(max_length=48, help_text="OCPP identity of the station")
    evse_id = models.PositiveIntegerField(null=True, blank=True)
    transaction_id = models.CharField(max_length=36, blank=True, help_text="OCPP transactionId")
    charger_transaction = models.ForeignKey(
        "chargers.Transaction", null=True, blank=True, on_delete=models.SET_NULL, related_name="plug_sessions"
    )
    matched_by = models.CharField(max_length=16, help_text="id_token, evccid, vin or manual")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    dc = models.BooleanField(default=False, help_text="DC charging: the vehicle's DC limits apply")
    ev_max_charge_w = models.PositiveIntegerField(null=True, blank=True, help_text="EV-reported limit (ISO 15118)")
    ev_max_discharge_w = models.PositiveIntegerField(null=True, blank=True, help_text="EV-reported V2X limit")
    evse_max_charge_w = models.PositiveIntegerField(null=True, blank=True)
    evse_max_discharge_w = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["vehicle"], condition=models.Q(ended_at__isnull=True), name="plug_session_one_open_per_vehicle"
            )
        ]
        indexes = [models.Index(fields=["station_id", "transaction_id"], name="plug_session_tx")]

    def __str__(self) -> str:
        return f"{self.vehicle} at {self.station_id}/{self.evse_id}"


class SocSource(models.TextChoices):
    REPORTED = "reported", "reported by the vehicle (via the station)"
    METERED = "metered", "last report advanced by metered energy"
    FLEET_MANAGER = "fleet_manager", "entered by the fleet manager"
    SEED = "seed", "demo seed"


class SocEstimate(models.Model):
    """A belief about a vehicle's stored energy: its value, where it came from, when valid and when known.

    A ``metered`` belief points at the report it was advanced from (``basis``) and records the meter registers used,
    so it can be recomputed; a fresh report starts a new chain.
    """

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="soc_estimates")
    soc_wh = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=SocSource.choices)
    valid_at = models.DateTimeField(help_text="the instant the value describes")
    known_at = models.DateTimeField(help_text="when the aggregator learned or computed it")
    import_register_wh = models.BigIntegerField(null=True, blank=True, help_text="meter import register at valid_at")
    export_register_wh = models.BigIntegerField(null=True, blank=True, help_text="meter export register at valid_at")
    basis = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="advanced")

    class Meta:
        ordering = ["-valid_at", "-known_at"]
        indexes = [models.Index(fields=["vehicle", "-valid_at", "-known_at"], name="soc_vehicle_latest")]

    def __str__(self) -> str:
        return f"{self.vehicle}: {self.soc_wh} Wh at {self.valid_at:%H:%M:%S} ({self.source})"


class TemperatureSource(models.TextChoices):
    REPORTED = "reported", "reported by the station (EV data, ISO 15118 / the edge agent's BMS reading)"
    FLEET_MANAGER = "fleet_manager", "entered by the fleet manager"


class PackTemperature(models.Model):
    """A pack temperature reading of a vehicle: value, source, when valid and when known.

    Stored when it changed or at least every ``fleet.services.vehicles.TEMPERATURE_KEEP_S`` (a pack's thermal mass
    makes a per-second series redundant); the newest is copied to ``Vehicle.pack_temperature_c`` for allocation,
    derating and bids, and the series prices each settled cycle at the temperature it ran at.
    """

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="pack_temperatures")
    temperature_c = models.FloatField()
    source = models.CharField(max_length=16, choices=TemperatureSource.choices)
    valid_at = models.DateTimeField(help_text="the instant the value describes")
    known_at = models.DateTimeField(help_text="when the aggregator learned it")

    class Meta:
        ordering = ["-valid_at", "-id"]
        indexes = [models.Index(fields=["vehicle", "-valid_at"], name="packtemp_vehicle_latest")]

    def __str__(self) -> str:
        return f"{self.vehicle}: {self.temperature_c:.1f} degC at {self.valid_at:%H:%M:%S} ({self.source})"


class VehicleState(models.Model):
    """Derived, refreshed by ``fleet.tasks.refresh_vehicle_state`` when telemetry changes (never polled).

    ``dirty`` is the work claim: a refresh request sets it, the task clears it with one atomic update and only the
    worker whose update changed a row does the work, so duplicate deliveries cost nothing.
    """

    vehicle = models.OneToOneField(Vehicle, on_delete=models.CASCADE, related_name="state", primary_key=True)
    dirty = models.BooleanField(default=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    plugged_in = models.BooleanField(default=False)
    soc_wh = models.PositiveIntegerField(null=True, blank=True)
    soc_source = models.CharField(max_length=16, blank=True)
    soc_valid_at = models.DateTimeField(null=True, blank=True)
    departure_at = models.DateTimeField(null=True, blank=True)
    target_wh = models.PositiveIntegerField(null=True, blank=True)
    up_w = models.IntegerField(default=0, help_text="discharge-direction flexibility now, 15 min hold")
    down_w = models.IntegerField(default=0, help_text="charge-direction flexibility now, 15 min hold")
    baseline_w = models.IntegerField(default=0)
    flexibility = models.JSONField(default=dict, blank=True, help_text="envelope over the horizon (as_dict)")

    def __str__(self) -> str:
        return f"state of {self.vehicle_id}"


class ApiScope(models.TextChoices):
    READ = "read", "read: flexibility, telemetry, reports"
    SIGNAL = "signal", "signal: send regulation signal values and reserve events"
    COMMAND = "command", "command: station commands"
    FLEET_WRITE = "fleet:write", "fleet:write: vehicles, departures, SoC"


class ApiKey(AbstractAPIKey):
    """An API client's key: hashed at rest (only its prefix is stored in clear), with an expiry, revocable, limited
    to scopes and to one organisation (and, for utilities, optionally one portfolio). Acts as its ``user``."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    scopes = models.JSONField(default=list, help_text='ApiScope values, e.g. ["read", "signal"]')
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    portfolio = models.CharField(max_length=64, blank=True, help_text="blank: every portfolio of the organisation")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


class AlertKind(models.TextChoices):
    NEAR_FLOOR = "near_floor", "car near its mobility floor"
    STATION_OFFLINE = "station_offline", "station offline"
    TRIP = "trip", "grid trip (DER alarm)"
    OVER_TEMPERATURE = "over_temperature", "over-temperature"
    DEPARTURE_AT_RISK = "departure_at_risk", "departure target at risk"


class FleetAlert(models.Model):
    """A condition a fleet manager must see, raised once when it starts and cleared once when it ends.

    ``fleet.services.alerts.alerts_sync`` diffs the current conditions against the open rows (``cleared_at`` null):
    a new condition opens a row, a gone one closes its row; one still there leaves its row alone, however often the
    sync runs. ``subject`` names what it is about (``vehicle:<id>`` or ``station:<station_id>``).
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    subject = models.CharField(max_length=80, help_text="vehicle:<id> or station:<station_id>")
    vehicle = models.ForeignKey(Vehicle, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    station_id = models.CharField(max_length=48, blank=True)
    message = models.CharField(max_length=255)
    raised_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject"],
                condition=models.Q(cleared_at__isnull=True),
                name="alert_one_open_per_subject",
            )
        ]
        indexes = [models.Index(fields=["organisation", "cleared_at"], name="alert_org_open")]

    def __str__(self) -> str:
        state = "open" if self.cleared_at is None else "cleared"
        return f"{self.get_kind_display()} {self.subject} ({state})"


class VehicleCommand(models.Model):
    """Audit trail of what a person asked of a vehicle from the dashboard or the API (a one-off departure target,
    discharge now), refusals included with their reason. Rows are never edited."""

    class Outcome(models.TextChoices):
        DONE = "done", "done"
        REFUSED = "refused", "refused (reason given)"
        FAILED = "failed", "failed at the station"

    vehicle = models.ForeignKey(Vehicle, on_delete=models.CASCADE, related_name="commands")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="vehicle_commands"
    )
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=32, help_text="trip_target or discharge_now")
    request = models.JSONField(default=dict)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    requested_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.vehicle_id} by {self.actor_label} ({self.outcome})"
