"""Django admin for the CSMS: provisioning (stations, id tokens) and read-mostly views of what stations report."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from chargers.models import (
    CertificateSigning,
    ChargingProfile,
    Connector,
    DerAlarm,
    DerControl,
    DeviceVariable,
    EvChargingNeeds,
    Evse,
    IdToken,
    InstalledCertificate,
    MessageLog,
    MeterValue,
    SecurityEvent,
    SecurityProfile,
    Station,
    StationCommand,
    StationEvent,
    Transaction,
    TransactionEvent,
)
from chargers.passwords import MAX_LENGTH, MIN_LENGTH
from chargers.services.certificates import station_certificates_revoke_insecure
from chargers.services.provisioning import station_accept


class StationForm(forms.ModelForm):
    new_password = forms.CharField(
        required=False,
        min_length=MIN_LENGTH,
        max_length=MAX_LENGTH,
        widget=forms.PasswordInput(render_value=False),
        help_text=f"OCPP BasicAuthPassword ({MIN_LENGTH}-{MAX_LENGTH} characters); leave empty to keep the current one",
    )

    class Meta:
        model = Station
        fields = ["station_id", "boot_status", "security_profile", "heartbeat_interval"]

    def save(self, commit: bool = True) -> Station:
        station = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            station.set_password(self.cleaned_data["new_password"])
        if commit:
            station.save()
        return station


class EvseInline(admin.TabularInline):
    model = Evse
    extra = 0


class InstalledCertificateInline(admin.TabularInline):
    """What the station last reported as installed (``station certs refresh``): evidence, not editable here."""

    model = InstalledCertificate
    extra = 0
    can_delete = False
    fields = ("certificate_type", "serial_number", "hash_algorithm", "issuer_name_hash", "reported_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Station)
class StationAdmin(admin.ModelAdmin):
    form = StationForm
    list_display = [
        "station_id", "online", "boot_status", "security_profile", "ocpp_version", "vendor", "model", "last_seen"
    ]  # fmt: skip
    list_filter = ["online", "boot_status", "ocpp_version", "vendor"]
    search_fields = ["station_id", "vendor", "model", "serial_number"]
    readonly_fields = [
        "ocpp_version",
        "vendor",
        "model",
        "serial_number",
        "firmware_version",
        "last_boot_at",
        "last_boot_reason",
        "online",
        "last_seen",
        "connected_at",
        "channel_name",
        "created_at",
    ]
    inlines = [EvseInline, InstalledCertificateInline]
    actions = ["accept"]

    def save_model(self, request: HttpRequest, obj: Station, form: forms.ModelForm[Station], change: bool) -> None:
        previous = form.initial.get("security_profile") or 0
        super().save_model(request, obj, form, change)
        if change and obj.security_profile == SecurityProfile.TLS_CLIENT_CERT and previous < obj.security_profile:
            # Raised to profile 3: certificates from CSRs sent over plain ws:// would open its socket; revoked.
            actor = f"admin:{getattr(request.user, 'username', '') or '?'}"
            revoked = station_certificates_revoke_insecure(station_ids=[obj.station_id], actor=actor)
            if revoked:
                self.message_user(request, f"{obj.station_id}: revoked {revoked} certificate(s) requested over ws://",
                                  messages.WARNING)  # fmt: skip

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (
            "station_id", "new_password", "boot_status", "security_profile", "heartbeat_interval", *self.readonly_fields
        )  # fmt: skip

    @admin.action(
        description="Accept the selected stations (online ones are asked to boot again now)", permissions=["change"]
    )
    def accept(self, request: HttpRequest, queryset: QuerySet[Station]) -> None:
        """OCPP B02: a Pending station is Accepted at its next boot, which an online station is asked for now."""
        user = getattr(request, "user", None)
        actor = getattr(user, "username", "") or "admin"
        for station in queryset.exclude(boot_status="Accepted"):
            result = station_accept(station_id=station.station_id, actor_user_id=getattr(user, "pk", None),
                                    actor_label=f"admin:{actor}", timeout=10)  # fmt: skip
            note = "booting again now" if result.triggered else result.note
            self.message_user(request, f"{station.station_id}: {result.previous} -> Accepted ({note})", messages.INFO)


@admin.register(Connector)
class ConnectorAdmin(admin.ModelAdmin):
    list_display = ["evse", "connector_id", "status", "status_at"]
    list_filter = ["status"]
    search_fields = ["evse__station__station_id"]


@admin.register(IdToken)
class IdTokenAdmin(admin.ModelAdmin):
    list_display = ["id_token", "type", "status", "group", "created_at"]
    list_filter = ["status", "type"]
    search_fields = ["id_token", "group__id_token"]
    raw_id_fields = ["group"]


_TRANSACTION_EVENT_FIELDS = ("seq_no", "event_type", "trigger_reason", "timestamp", "offline", "charging_state")


class TransactionEventInline(admin.TabularInline):
    model = TransactionEvent
    extra = 0
    fields = _TRANSACTION_EVENT_FIELDS
    readonly_fields = _TRANSACTION_EVENT_FIELDS
    ordering = ["seq_no"]


@admin.register(Transaction)
class TransactionAdmin(admin.ModelAdmin):
    list_display = ["transaction_id", "station", "evse_id", "active", "charging_state", "started_at", "ended_at"]
    list_filter = ["active", "charging_state", "stopped_reason"]
    search_fields = ["transaction_id", "station__station_id", "id_token"]
    date_hierarchy = "started_at"
    inlines = [TransactionEventInline]
    raw_id_fields = ["station"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """What stations reported is evidence: viewable and searchable, not editable."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(MeterValue)
class MeterValueAdmin(ReadOnlyAdmin):
    list_display = ["station", "evse_id", "timestamp", "measurand", "phase", "value", "unit", "context", "source"]
    list_filter = ["measurand", "unit", "context", "location", "source"]
    search_fields = ["station__station_id", "transaction__transaction_id"]
    date_hierarchy = "timestamp"
    list_select_related = ["station"]


@admin.register(MessageLog)
class MessageLogAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "station", "direction", "message_type", "action", "message_id", "error_code"]
    list_filter = ["direction", "message_type", "action", "error_code", "ocpp_version"]
    search_fields = ["station__station_id", "message_id", "action", "error_code", "error_description"]
    date_hierarchy = "created_at"
    list_select_related = ["station"]


@admin.register(StationEvent)
class StationEventAdmin(ReadOnlyAdmin):
    list_display = ["timestamp", "station", "kind", "summary"]
    list_filter = ["kind"]
    search_fields = ["station__station_id", "summary"]
    date_hierarchy = "timestamp"
    list_select_related = ["station"]


@admin.register(SecurityEvent)
class SecurityEventAdmin(ReadOnlyAdmin):
    """Security events about unknown station ids or client addresses (a known station's are StationEvents, kinds
    AuthFailed, RateLimited, PasswordRotated, ProfileViolation)."""

    list_display = ["timestamp", "kind", "station_ident", "address", "summary"]
    list_filter = ["kind"]
    search_fields = ["station_ident", "address"]
    date_hierarchy = "timestamp"


@admin.register(EvChargingNeeds)
class EvChargingNeedsAdmin(ReadOnlyAdmin):
    list_display = [
        "received_at",
        "station",
        "evse_id",
        "requested_energy_transfer",
        "departure_time",
        "energy_amount_wh",
        "max_discharge_power_w",
        "target_soc",
    ]
    list_filter = ["requested_energy_transfer", "control_mode"]
    search_fields = ["station__station_id"]


@admin.register(DeviceVariable)
class DeviceVariableAdmin(ReadOnlyAdmin):
    list_display = ["station", "component", "evse_id", "variable", "attribute_type", "value", "mutability"]
    list_filter = ["component", "attribute_type", "mutability"]
    search_fields = ["station__station_id", "component", "variable", "value"]


@admin.register(ChargingProfile)
class ChargingProfileAdmin(ReadOnlyAdmin):
    list_display = ["station", "evse_id", "profile_id", "purpose", "kind", "stack_level", "source", "status", "active"]
    list_filter = ["source", "purpose", "kind", "active", "status"]
    search_fields = ["station__station_id"]


@admin.register(DerControl)
class DerControlAdmin(ReadOnlyAdmin):
    list_display = ["station", "control_id", "control_type", "source", "status", "is_default", "started"]
    list_filter = ["control_type", "source", "is_default", "is_superseded"]
    search_fields = ["station__station_id", "control_id"]


@admin.register(DerAlarm)
class DerAlarmAdmin(ReadOnlyAdmin):
    list_display = ["timestamp", "station", "control_type", "grid_event_fault", "alarm_ended"]
    list_filter = ["control_type", "grid_event_fault", "alarm_ended"]
    search_fields = ["station__station_id"]


@admin.register(StationCommand)
class StationCommandAdmin(ReadOnlyAdmin):
    """The audit trail: read, never added to, edited or deleted (not even by superusers)."""

    list_display = ["requested_at", "station_ident", "action", "outcome", "actor_label", "user", "answered_at"]
    list_filter = ["outcome", "action"]
    search_fields = ["station_ident", "actor_label", "action"]
    list_select_related = ["user"]
    date_hierarchy = "requested_at"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(InstalledCertificate)
class InstalledCertificateAdmin(ReadOnlyAdmin):
    list_display = ["station", "certificate_type", "serial_number", "hash_algorithm", "reported_at"]
    list_filter = ["certificate_type"]
    search_fields = ["station__station_id", "serial_number"]
    list_select_related = ["station"]


@admin.register(CertificateSigning)
class CertificateSigningAdmin(ReadOnlyAdmin):
    """Every SignCertificate and what became of it: refused (why), issued, delivered, rejected by the station."""

    list_display = ["received_at", "station", "certificate_type", "status", "reason_code", "reason", "attempts"]
    list_filter = ["status", "reason_code", "certificate_type"]
    search_fields = ["station__station_id", "reason"]
    list_select_related = ["station"]
    date_hierarchy = "received_at"
    exclude = ["csr", "certificate_chain"]  # long PEM; the certificate is linked
