"""Utility programs: the aggregator enrolled as a client (VEN, 2030.5 aggregator) of a utility's server.

One :class:`UtilityProgram` per enrolment: the protocol, the utility's endpoint, where its credentials are read
from (files and environment variables, never the database nor a command line), the organisation and portfolio it
enrols, and the product its events dispatch as. Its connection status (last contact, last event, the last error)
is kept on the row, written by the client that runs it. Every change of the configuration is a
:class:`UtilityProgramChange` (who, when, what). Every event received is a :class:`UtilityEvent` and every report
sent a :class:`UtilityReport`, each with its source (the protocol, the endpoint, the utility's own ids and the
payload as received or sent), for audit and settlement.

Power in integer W; ``power_w`` of an event is + for discharge / load reduction asked (what a reserve deployment
adds), ``limit_w`` a cap on the portfolio's export (+) or import (-) where the event sets one. Times UTC.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

__all__ = [
    "EventStatus",
    "Protocol",
    "ReportKind",
    "UtilityEvent",
    "UtilityProgram",
    "UtilityProgramChange",
    "UtilityReport",
]


class Protocol(models.TextChoices):
    OPENADR_2B = "openadr2b", "OpenADR 2.0b"
    OPENADR_3 = "openadr3", "OpenADR 3.0"
    IEEE_2030_5 = "ieee2030_5", "IEEE 2030.5 / CSIP"


class UtilityProgram(models.Model):
    """One enrolment of a portfolio in a utility's program, and the state of its connection."""

    organisation = models.ForeignKey("fleet.Organisation", on_delete=models.PROTECT, related_name="utility_programs")
    name = models.CharField(max_length=120)
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    endpoint = models.URLField(max_length=300, help_text="the VTN's or 2030.5 server's base URL")
    program_ref = models.CharField(
        max_length=120, blank=True, help_text="the utility's name for the program (OpenADR program name / 2030.5 DERP)"
    )
    client_name = models.CharField(
        max_length=120, help_text="the name the aggregator enrols under (VEN name; 2030.5 aggregator LFDI label)"
    )
    portfolio = models.CharField(max_length=64, help_text="fleet-<id>: the vehicles the program dispatches")
    product = models.ForeignKey(
        "markets.Product", on_delete=models.PROTECT, related_name="utility_programs", help_text="dispatched as"
    )
    # Credentials: paths under UTILITY_CREDENTIALS_DIR and names of UTILITY_* environment variables, never secrets.
    cert_file = models.CharField(max_length=255, blank=True, help_text="client certificate (PEM) file name")
    key_file = models.CharField(max_length=255, blank=True, help_text="client private key (PEM) file name")
    ca_file = models.CharField(max_length=255, blank=True, help_text="CA bundle the server is checked against")
    secret_env = models.CharField(
        max_length=64, blank=True, help_text="environment variable holding a token or client secret (UTILITY_*)"
    )
    level_step_w = models.PositiveIntegerField(
        default=0, help_text="OpenADR SIMPLE signal: W of load reduction per level (0: SIMPLE events not dispatched)"
    )
    poll_s = models.PositiveIntegerField(default=10, help_text="how often the server is polled (s)")
    report_s = models.PositiveIntegerField(default=60, help_text="telemetry report interval (s)")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Connection status: written by the client running the program (vpp.utility.services.connection_*).
    registration_ref = models.CharField(max_length=120, blank=True, help_text="id the server gave this client")
    last_contact_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_report_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    errors_in_a_row = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["organisation__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="utility_program_unique_name"),
            models.CheckConstraint(condition=Q(poll_s__gte=1), name="utility_program_poll_positive"),
            models.CheckConstraint(condition=Q(report_s__gte=1), name="utility_program_report_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_protocol_display()})"

    @property
    def healthy(self) -> bool:
        """In contact, and the last contact is newer than the last error."""
        if self.last_contact_at is None:
            return False
        return self.last_error_at is None or self.last_contact_at > self.last_error_at


class UtilityProgramChange(models.Model):
    """Audit trail of a program's configuration: who changed what, when. Append-only: a program with a trail (every
    program: its creation is one) cannot be deleted (PROTECT); it is disabled instead."""

    program = models.ForeignKey(UtilityProgram, on_delete=models.PROTECT, related_name="changes")
    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    actor_label = models.CharField(max_length=64, help_text="username, or system:<component>")
    action = models.CharField(max_length=16)  # created, changed, enabled, disabled
    changes = models.JSONField(default=dict, blank=True, help_text="field -> [before, after]")

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.program_id} {self.action} by {self.actor_label} at {self.at:%Y-%m-%d %H:%M:%S}"


class EventStatus(models.TextChoices):
    RECEIVED = "received", "received"
    SCHEDULED = "scheduled", "scheduled for dispatch"
    ACTIVE = "active", "dispatching"
    COMPLETED = "completed", "completed"
    CANCELLED = "cancelled", "cancelled by the utility"
    OPTED_OUT = "opted_out", "opted out"
    REFUSED = "refused", "refused (cannot be dispatched)"


class UtilityEvent(models.Model):
    """One event (one version of it: a modification is a new row) as a utility's server sent it."""

    program = models.ForeignKey(UtilityProgram, on_delete=models.PROTECT, related_name="events")
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    source = models.CharField(max_length=300, help_text="the server it came from (endpoint URL)")
    event_ref = models.CharField(max_length=120, help_text="the utility's id of the event (or the 2030.5 control)")
    modification = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=32, help_text="e.g. LOAD_DISPATCH, EXPORT_CAPACITY_LIMIT, opModFixedW")
    start = models.DateTimeField()
    end = models.DateTimeField()
    power_w = models.BigIntegerField(default=0, help_text="+ extra discharge / load reduction asked, W")
    limit_w = models.BigIntegerField(null=True, blank=True, help_text="a cap the event sets (W), if any")
    payload = models.JSONField(help_text="the event as received")
    received_at = models.DateTimeField(help_text="belief time: when the aggregator received it")
    status = models.CharField(max_length=16, choices=EventStatus.choices, default=EventStatus.RECEIVED)
    status_reason = models.TextField(blank=True)
    opt = models.CharField(max_length=8, blank=True, help_text="optIn / optOut as answered, if asked")
    dispatch_ref = models.CharField(max_length=100, blank=True, help_text="the reserve event id dispatch holds")
    first_dispatch_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-start", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["program", "event_ref", "modification"], name="utility_event_one_row_per_version"
            ),
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="utility_event_ends_after_start"),
        ]
        indexes = [models.Index(fields=["status", "start"], name="utility_event_status_start")]

    def __str__(self) -> str:
        return f"{self.event_ref}#{self.modification} {self.kind} {self.power_w} W {self.start:%Y-%m-%dT%H:%M}Z"


class ReportKind(models.TextChoices):
    TELEMETRY = "telemetry", "metered telemetry"
    CAPACITY = "capacity", "available up/down capacity"
    STATUS = "status", "DER status"
    EVENT = "event", "event response (metered)"


class UtilityReport(models.Model):
    """One report sent to a utility's server: the values sent, where they came from, and the server's answer."""

    program = models.ForeignKey(UtilityProgram, on_delete=models.PROTECT, related_name="reports")
    event = models.ForeignKey(UtilityEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="reports")
    kind = models.CharField(max_length=16, choices=ReportKind.choices)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    values = models.JSONField(help_text="what was reported (W, Wh), as sent")
    basis = models.JSONField(default=dict, blank=True, help_text="where the values came from (meter values, counts)")
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    accepted = models.BooleanField(null=True, help_text="the server's answer: None until it answered")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-period_end", "-id"]
        indexes = [models.Index(fields=["program", "kind", "period_end"], name="utility_report_program_kind")]

    def __str__(self) -> str:
        return f"{self.program_id} {self.kind} {self.period_start:%H:%M:%S}-{self.period_end:%H:%M:%S}"
