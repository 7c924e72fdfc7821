"""Admin for operators: organisations and their members, station ownership, API keys, fleets, vehicles with their
plans, schedules and beliefs."""

from __future__ import annotations

from django.contrib import admin
from rest_framework_api_key.admin import APIKeyModelAdmin

from fleet.models import (
    ApiKey,
    DeparturePlan,
    Fleet,
    FleetAlert,
    Membership,
    Organisation,
    PlugSession,
    SocEstimate,
    StationOwnership,
    Vehicle,
    VehicleCommand,
    VehicleState,
    WeeklyDeparture,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(StationOwnership)
class StationOwnershipAdmin(admin.ModelAdmin):
    """Moving a station to another organisation is an operator's edit of its row here."""

    list_display = ["station", "organisation", "assigned_at"]
    list_filter = ["organisation"]
    search_fields = ["station__station_id"]
    autocomplete_fields = ["station"]


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    """Revoke a key by ticking "revoked"; the key itself is shown once, when it is created."""

    # The library types its tuples by length: ours are longer on purpose.
    list_display = (*APIKeyModelAdmin.list_display, "user", "organisation", "portfolio", "scopes")  # type: ignore[assignment]
    list_filter = (*APIKeyModelAdmin.list_filter, "organisation")  # type: ignore[assignment]
    search_fields = (*APIKeyModelAdmin.search_fields, "user__username")  # type: ignore[assignment]


@admin.register(Fleet)
class FleetAdmin(admin.ModelAdmin):
    list_display = ["name", "organisation", "mobility_floor_pct", "default_node", "timezone"]
    list_filter = ["organisation"]
    search_fields = ["name"]


class WeeklyDepartureInline(admin.TabularInline):
    model = WeeklyDeparture
    extra = 0


class DeparturePlanInline(admin.TabularInline):
    model = DeparturePlan
    extra = 0
    fields = ["source", "departure_at", "target_soc_pct", "known_at"]
    ordering = ["-known_at"]


@admin.register(Vehicle)
class VehicleAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "model",
        "fleet",
        "usable_capacity_wh",
        "ac_max_charge_w",
        "ac_max_discharge_w",
        "state_of_health",
        "pack_temperature_c",
        "effective_floor_pct",
        "node",
    ]
    list_filter = ["fleet", "model"]
    search_fields = ["name", "vin", "evccid", "id_token"]
    inlines = [WeeklyDepartureInline, DeparturePlanInline]
    list_select_related = ["fleet"]


@admin.register(PlugSession)
class PlugSessionAdmin(admin.ModelAdmin):
    list_display = ["vehicle", "station_id", "evse_id", "transaction_id", "matched_by", "started_at", "ended_at"]
    list_filter = ["matched_by"]
    search_fields = ["station_id", "transaction_id", "vehicle__name"]
    list_select_related = ["vehicle"]


@admin.register(SocEstimate)
class SocEstimateAdmin(admin.ModelAdmin):
    list_display = ["vehicle", "soc_wh", "source", "valid_at", "known_at"]
    list_filter = ["source"]
    search_fields = ["vehicle__name"]
    list_select_related = ["vehicle"]
    raw_id_fields = ["vehicle", "basis"]


@admin.register(VehicleState)
class VehicleStateAdmin(admin.ModelAdmin):
    list_display = ["vehicle", "plugged_in", "soc_wh", "soc_source", "departure_at", "up_w", "down_w", "refreshed_at"]
    list_filter = ["plugged_in"]
    readonly_fields = [f.name for f in VehicleState._meta.fields]


@admin.register(FleetAlert)
class FleetAlertAdmin(admin.ModelAdmin):
    list_display = ["kind", "subject", "organisation", "message", "raised_at", "cleared_at"]
    list_filter = ["kind", "organisation"]
    search_fields = ["subject", "message"]
    readonly_fields = [f.name for f in FleetAlert._meta.fields]


@admin.register(VehicleCommand)
class VehicleCommandAdmin(admin.ModelAdmin):
    """Read-only audit trail of what people asked of vehicles."""

    list_display = ["requested_at", "vehicle", "action", "outcome", "actor_label", "reason"]
    list_filter = ["action", "outcome"]
    search_fields = ["vehicle__name", "actor_label"]
    readonly_fields = [f.name for f in VehicleCommand._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
