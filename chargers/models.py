"""CSMS data: stations and what they report, in the units the project stores (integer Wh/W/%, UTC).

Rows written on the hot path (message log, meter values) are created in bulk by the group-commit writer
(``chargers.writer``); nothing here has side effects in ``save()``.

Why one module: it is the CSMS's whole schema (one table per OCPP concept, each a few lines), read as one; the
``StationCommand`` audit trail pushed it past 500 lines; ``PkiCertificate`` (the PKI's register) belongs with the
stations it certifies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from chargers.passwords import password_hash, password_verify


def _default_heartbeat_interval() -> int:
    return int(settings.OCPP_HEARTBEAT_INTERVAL)


class BootStatus(models.TextChoices):
    """What the CSMS answers to BootNotification (RegistrationStatusEnumType)."""

    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


class SecurityProfile(models.IntegerChoices):
    """OCPP 2.0.1 Part 2 A00: how a station must connect."""

    BASIC = 1, "1: Basic auth (ws:// or wss://)"
    TLS_BASIC = 2, "2: TLS + Basic auth"
    TLS_CLIENT_CERT = 3, "3: TLS with a client certificate"


class Station(models.Model):
    """A charging station, identified by its OCPP identity (the last segment of its WebSocket URL)."""

    station_id = models.CharField(max_length=48, unique=True, help_text="OCPP identity, the user of Basic auth")
    password_hash = models.CharField(max_length=128, blank=True, help_text="hmac-sha256$salt$digest; empty: refused")
    # A rotated password (SetVariables SecurityCtrlr.BasicAuthPassword): valid beside the current one until the
    # station connects with it, which makes it the current one (chargers.services.password_rotation).
    password_pending_hash = models.CharField(
        max_length=128, blank=True, help_text="rotated password sent to the station, not yet used by it"
    )
    password_pending_at = models.DateTimeField(null=True, blank=True, help_text="when the rotated password was sent")
    boot_status = models.CharField(max_length=16, choices=BootStatus.choices, default=BootStatus.ACCEPTED)
    security_profile = models.PositiveSmallIntegerField(
        choices=SecurityProfile.choices,
        default=SecurityProfile.BASIC,
        help_text="OCPP security profile enforced at the handshake: 1 Basic auth, 2 TLS + Basic auth, 3 mutual TLS",
    )
    heartbeat_interval = models.PositiveIntegerField(default=_default_heartbeat_interval, help_text="seconds")
    # Learned from the station.
    ocpp_version = models.CharField(max_length=8, blank=True, help_text="negotiated subprotocol, e.g. 2.1")
    vendor = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=50, blank=True)
    serial_number = models.CharField(max_length=25, blank=True)
    firmware_version = models.CharField(max_length=50, blank=True)
    last_boot_at = models.DateTimeField(null=True, blank=True)
    last_boot_reason = models.CharField(max_length=32, blank=True)
    # Connection state.
    online = models.BooleanField(default=False)
    last_seen = models.DateTimeField(null=True, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    channel_name = models.CharField(
        max_length=200, blank=True, help_text="channel-layer name of the consumer holding the socket; empty: none"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["station_id"]
        indexes = [models.Index(fields=["online", "last_seen"], name="station_online_seen")]

    def __str__(self) -> str:
        return self.station_id

    def set_password(self, raw: str) -> None:
        self.password_hash = password_hash(raw)

    def check_password(self, raw: str) -> bool:
        return bool(self.password_hash) and password_verify(raw, self.password_hash)

    def check_pending_password(self, raw: str) -> bool:
        return bool(self.password_pending_hash) and password_verify(raw, self.password_pending_hash)


class Evse(models.Model):
    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="evses")
    evse_id = models.PositiveIntegerField(help_text="OCPP evse id (> 0)")

    class Meta:
        ordering = ["station", "evse_id"]
        constraints = [models.UniqueConstraint(fields=["station", "evse_id"], name="evse_unique_per_station")]

    def __str__(self) -> str:
        return f"{self.station_id}/{self.evse_id}"


class ConnectorStatus(models.TextChoices):
    AVAILABLE = "Available"
    OCCUPIED = "Occupied"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class Connector(models.Model):
    evse = models.ForeignKey(Evse, on_delete=models.CASCADE, related_name="connectors")
    connector_id = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=ConnectorStatus.choices, blank=True)
    status_at = models.DateTimeField(null=True, blank=True, help_text="station's timestamp of the last status")

    class Meta:
        ordering = ["evse", "connector_id"]
        constraints = [models.UniqueConstraint(fields=["evse", "connector_id"], name="connector_unique_per_evse")]

    def __str__(self) -> str:
        return f"{self.evse}/{self.connector_id}"


class IdTokenStatus(models.TextChoices):
    """The subset of AuthorizationStatusEnumType an operator provisions."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"


class IdToken(models.Model):
    id_token = models.CharField(max_length=255)
    type = models.CharField(max_length=20, help_text="IdTokenEnumType, e.g. ISO14443, eMAID, Central")
    status = models.CharField(max_length=16, choices=IdTokenStatus.choices, default=IdTokenStatus.ACCEPTED)
    group = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="members")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id_token"]
        constraints = [models.UniqueConstraint(fields=["id_token", "type"], name="idtoken_unique")]

    def __str__(self) -> str:
        return f"{self.id_token} ({self.type})"


class Transaction(models.Model):
    """A charging session as the station reports it. State follows the event with the highest seqNo."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="transactions")
    transaction_id = models.CharField(max_length=36)
    evse_id = models.PositiveIntegerField(null=True, blank=True)
    connector_id = models.PositiveIntegerField(null=True, blank=True)
    id_token = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    charging_state = models.CharField(max_length=20, blank=True)
    stopped_reason = models.CharField(max_length=32, blank=True)
    last_seq_no = models.IntegerField(default=-1, help_text="seqNo of the event the state above comes from")
    energy_wh = models.BigIntegerField(null=True, blank=True, help_text="last Energy.Active.Import.Register, Wh")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(fields=["station", "transaction_id"], name="transaction_unique_per_station")
        ]
        indexes = [models.Index(fields=["station", "active"], name="transaction_station_active")]

    def __str__(self) -> str:
        return f"{self.station_id}:{self.transaction_id}"

    def event_apply(self, payload: dict[str, Any], *, at: datetime, energy_wh: int | None) -> set[str]:
        """Apply one new TransactionEvent to this row in memory; returns the names of the fields it changed.

        The start and end are taken from whichever event reports them; everything else only from an event newer
        (higher seqNo) than the one the state comes from, so a replayed older event never rolls the state back.
        """
        info, evse, seq_no = payload["transactionInfo"], payload.get("evse") or {}, payload["seqNo"]
        changes: dict[str, Any] = {}
        if payload["eventType"] == "Started" and (self.started_at is None or at < self.started_at):
            changes["started_at"] = at
        if payload["eventType"] == "Ended":
            changes.update(active=False, ended_at=at, stopped_reason=info.get("stoppedReason", "Local"))
        if "idToken" in payload:
            changes["id_token"] = payload["idToken"]["idToken"]
        if seq_no > self.last_seq_no:
            changes["last_seq_no"] = seq_no
            if "chargingState" in info:
                changes["charging_state"] = info["chargingState"]
            if evse.get("id"):
                changes.update(evse_id=evse["id"], connector_id=evse.get("connectorId", self.connector_id))
            if energy_wh is not None:
                changes["energy_wh"] = energy_wh
        changed = {name for name, value in changes.items() if getattr(self, name) != value}
        for name in changed:
            setattr(self, name, changes[name])
        return changed


class TransactionEventType(models.TextChoices):
    STARTED = "Started"
    UPDATED = "Updated"
    ENDED = "Ended"


class TransactionEvent(models.Model):
    """One TransactionEvent as received; unique per transaction (so per station + transactionId) and seqNo."""

    transaction = models.ForeignKey(Transaction, on_delete=models.CASCADE, related_name="events")
    seq_no = models.IntegerField()
    event_type = models.CharField(max_length=8, choices=TransactionEventType.choices)
    trigger_reason = models.CharField(max_length=32)
    timestamp = models.DateTimeField(help_text="station's time of the event")
    received_at = models.DateTimeField()
    offline = models.BooleanField(default=False, help_text="queued while the station was offline")
    charging_state = models.CharField(max_length=20, blank=True)
    payload = models.JSONField()

    class Meta:
        ordering = ["transaction", "seq_no"]
        constraints = [models.UniqueConstraint(fields=["transaction", "seq_no"], name="txevent_unique_seq")]

    def __str__(self) -> str:
        return f"{self.transaction} #{self.seq_no} {self.event_type}"


# The OCPP measurand of the import energy register, the default when a sampled value names none.
ENERGY_IMPORT_REGISTER = "Energy.Active.Import.Register"


class MeterValue(models.Model):
    """One sampled value, as an integer in the unit named by ``unit`` (Wh, W, var, varh, Percent, mA, mV, mHz, ...).

    ``timestamp`` is when the station measured it; ``received_at`` is when the CSMS learned it (its belief time);
    ``source`` names the message that carried it.
    """

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="meter_values")
    evse_id = models.PositiveIntegerField(default=0, help_text="0 = the station's main meter")
    transaction = models.ForeignKey(
        Transaction, null=True, blank=True, on_delete=models.SET_NULL, related_name="meter_values"
    )
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField()
    measurand = models.CharField(max_length=48, default=ENERGY_IMPORT_REGISTER)
    phase = models.CharField(max_length=8, blank=True)
    location = models.CharField(max_length=8, blank=True)
    context = models.CharField(max_length=24, blank=True)
    value = models.BigIntegerField()
    unit = models.CharField(max_length=20, help_text="stored unit, or the station's own (schema: up to 20 characters)")
    source = models.CharField(max_length=32, help_text="carrying action, e.g. MeterValues or TransactionEvent")

    class Meta:
        ordering = ["-timestamp"]
        indexes = [
            models.Index(fields=["station", "measurand", "timestamp"], name="meter_station_measurand_ts"),
            models.Index(fields=["transaction", "timestamp"], name="meter_transaction_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.station_id} {self.measurand}={self.value} {self.unit} @ {self.timestamp:%Y-%m-%dT%H:%M:%SZ}"


class Direction(models.TextChoices):
    IN = "in", "station -> CSMS"
    OUT = "out", "CSMS -> station"


class MessageLog(models.Model):
    """Every OCPP-J frame exchanged. An incoming CALL keeps the answer sent, so a retransmit is answered again.

    A retransmit is the same message id with the same payload (``payload_sha256``) within
    ``OCPP_RETRANSMIT_WINDOW``; message ids are unique per connection only, so nothing here is unique.

    ``message_type``: 2 CALL, 3 CALLRESULT, 4 CALLERROR, 5 CALLRESULTERROR, 6 SEND, 0 unparsable frame.
    For a CALL, ``response`` is the CALLRESULT payload (or empty with ``error_code`` for a CALLERROR).
    """

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="messages")
    direction = models.CharField(max_length=3, choices=Direction.choices)
    message_type = models.PositiveSmallIntegerField()
    message_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, blank=True)
    ocpp_version = models.CharField(max_length=8, blank=True)
    payload = models.JSONField(null=True, blank=True)
    raw = models.TextField(blank=True, help_text="the frame as received when it could not be parsed")
    response = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    error_description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField()
    responded_at = models.DateTimeField(null=True, blank=True)
    payload_sha256 = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="incoming CALL: hex SHA-256 of the payload as received (chargers.ocpp_j.payload_digest)",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The retransmit lookup (chargers.batch.answered_load): one probe per (station, message id), in the window.
            models.Index(
                fields=["station", "message_id", "created_at"],
                condition=Q(direction="in", message_type=2, error_code=""),
                name="messagelog_incoming_call",
            ),
            models.Index(fields=["station", "created_at"], name="messagelog_station_created"),
            models.Index(fields=["action", "created_at"], name="messagelog_action_created"),
            models.Index(fields=["message_id"], name="messagelog_message_id"),
        ]

    def __str__(self) -> str:
        return f"{self.station_id} {self.direction} [{self.message_type}] {self.action} {self.message_id}"


class StationEventKind(models.TextChoices):
    CONNECTED = "Connected"
    DISCONNECTED = "Disconnected"
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
    REPLACED = "Replaced"
    BOOTED = "Booted"
    NOTIFY_EVENT = "NotifyEvent"
    SECURITY_EVENT = "SecurityEvent"
    FIRMWARE_STATUS = "FirmwareStatus"
    LOG_STATUS = "LogStatus"
    CHARGING_LIMIT = "ChargingLimit"
    CHARGING_LIMIT_CLEARED = "ChargingLimitCleared"
    DATA_TRANSFER = "DataTransfer"
    DER_START_STOP = "DERStartStop"
    RESERVATION_STATUS = "ReservationStatus"
    REGISTRATION = "Registration"  # an operator changed the station's registration status (e.g. accepted it)
    # Security events the CSMS itself detects (issue 14); SECURITY_EVENT above is what a station reports.
    AUTH_FAILED = "AuthFailed"  # a handshake with wrong credentials, or refused for too many of them
    RATE_LIMITED = "RateLimited"  # frames beyond OCPP_MAX_MESSAGES_PER_S, or a message above OCPP_MAX_MESSAGE_BYTES
    PASSWORD_ROTATED = "PasswordRotated"  # noqa: S105 (a kind) - a new password sent, accepted, refused, used
    PROFILE_VIOLATION = "ProfileViolation"  # a connection breaking the station's security profile
    CSR_REFUSED = "CsrRefused"  # a SignCertificate the CSMS answered Rejected (bad CSR, another's id, over the limit)
    CERTIFICATE_REJECTED = "CertificateRejected"  # a station answered Rejected to the CertificateSigned it asked for
    CERTIFICATE_ISSUED = "CertificateIssued"  # an operator issued a certificate and its key (`pki station-cert`)
    CERTIFICATE_REVOKED = "CertificateRevoked"  # a certificate revoked, or a connection closed because its was
    CERTIFICATE_EXPIRED = "CertificateExpired"  # a connection closed when its client certificate expired
    OTHER = "Other"


class StationEvent(models.Model):
    """Something that happened to or was reported by a station, for operators and audits."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=24, choices=StationEventKind.choices)
    timestamp = models.DateTimeField(help_text="when it happened (station's clock for reported events)")
    received_at = models.DateTimeField()
    summary = models.CharField(max_length=255, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-timestamp"]
        indexes = [models.Index(fields=["station", "kind", "timestamp"], name="stationevent_station_kind_ts")]

    def __str__(self) -> str:
        return f"{self.station_id} {self.kind} {self.summary}"


class SecurityEvent(models.Model):
    """A security event the CSMS detected about a station id that does not exist, or about a client address
    (the same kinds as StationEvent's security kinds; a known station's events are StationEvents)."""

    kind = models.CharField(max_length=24, choices=StationEventKind.choices)
    station_ident = models.CharField(max_length=48, blank=True, help_text="the station id claimed, as given")
    address = models.CharField(max_length=64, blank=True, help_text="client address of the connection")
    timestamp = models.DateTimeField()
    summary = models.CharField(max_length=255, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-timestamp"]
        indexes = [models.Index(fields=["kind", "timestamp"], name="securityevent_kind_ts")]

    def __str__(self) -> str:
        return f"{self.kind} {self.station_ident or self.address} {self.summary}"


class EvChargingNeeds(models.Model):
    """NotifyEVChargingNeeds: what the EV asks for, incl. OCPP 2.1 V2X parameters. Energy in Wh, power in W."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="charging_needs")
    evse_id = models.PositiveIntegerField()
    received_at = models.DateTimeField()
    requested_energy_transfer = models.CharField(max_length=24)
    control_mode = models.CharField(max_length=24, blank=True, help_text="2.1: ScheduledControl/DynamicControl")
    mobility_needs_mode = models.CharField(max_length=24, blank=True, help_text="2.1: EVCC or EVCC_SECC")
    departure_time = models.DateTimeField(null=True, blank=True)
    energy_amount_wh = models.BigIntegerField(null=True, blank=True)
    ev_max_power_w = models.IntegerField(null=True, blank=True)
    # 2.1 v2xChargingParameters (W / Wh, discharge values are magnitudes as the schema gives them).
    min_charge_power_w = models.IntegerField(null=True, blank=True)
    max_charge_power_w = models.IntegerField(null=True, blank=True)
    min_discharge_power_w = models.IntegerField(null=True, blank=True)
    max_discharge_power_w = models.IntegerField(null=True, blank=True)
    ev_target_energy_request_wh = models.BigIntegerField(null=True, blank=True)
    ev_min_energy_request_wh = models.BigIntegerField(null=True, blank=True)
    ev_max_energy_request_wh = models.BigIntegerField(null=True, blank=True)
    ev_min_v2x_energy_request_wh = models.BigIntegerField(null=True, blank=True)
    ev_max_v2x_energy_request_wh = models.BigIntegerField(null=True, blank=True)
    target_soc = models.PositiveSmallIntegerField(null=True, blank=True)
    payload = models.JSONField(help_text="the chargingNeeds object as received")

    class Meta:
        ordering = ["-received_at"]
        verbose_name_plural = "EV charging needs"
        indexes = [models.Index(fields=["station", "evse_id", "received_at"], name="needs_station_evse_ts")]

    def __str__(self) -> str:
        return f"{self.station_id}/{self.evse_id} needs @ {self.received_at:%Y-%m-%dT%H:%M:%SZ}"


#: What identifies one device-model attribute of a station (NotifyReport upserts on exactly this key).
DEVICE_VARIABLE_KEY = [
    "station",
    "component",
    "component_instance",
    "evse_id",
    "connector_id",
    "variable",
    "variable_instance",
    "attribute_type",
]


class DeviceVariable(models.Model):
    """One attribute of one variable of the station's device model, from NotifyReport.

    ``evse_id``/``connector_id`` 0 = the component is not tied to an EVSE/connector (OCPP ids start at 1).
    """

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="variables")
    component = models.CharField(max_length=50)
    component_instance = models.CharField(max_length=50, blank=True)
    evse_id = models.PositiveIntegerField(default=0)
    connector_id = models.PositiveIntegerField(default=0)
    variable = models.CharField(max_length=50)
    variable_instance = models.CharField(max_length=50, blank=True)
    attribute_type = models.CharField(max_length=8, default="Actual")
    value = models.TextField(blank=True)
    mutability = models.CharField(max_length=10, blank=True)
    data_type = models.CharField(max_length=20, blank=True)
    unit = models.CharField(max_length=16, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["station", "component", "variable"]
        constraints = [
            models.UniqueConstraint(
                fields=DEVICE_VARIABLE_KEY,
                name="devicevariable_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.station_id} {self.component}.{self.variable}[{self.attribute_type}]={self.value}"


class ProfileSource(models.TextChoices):
    CSMS = "csms", "set by the CSMS"
    REPORTED = "reported", "reported by the station"
    CHARGING_LIMIT = "limit", "external charging limit"


class ChargingProfile(models.Model):
    """A charging profile as set by the CSMS or reported by the station; ``payload`` is the OCPP object."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="charging_profiles")
    evse_id = models.PositiveIntegerField(default=0, help_text="0 = the whole station")
    profile_id = models.IntegerField()
    stack_level = models.IntegerField()
    purpose = models.CharField(max_length=40, help_text="ChargingProfilePurposeEnumType (up to 34 characters)")
    kind = models.CharField(max_length=16)
    source = models.CharField(max_length=8, choices=ProfileSource.choices)
    status = models.CharField(max_length=16, blank=True, help_text="station's answer when set by the CSMS")
    limit_source = models.CharField(max_length=20, blank=True, help_text="chargingLimitSource when reported")
    active = models.BooleanField(default=True)
    payload = models.JSONField()
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ["station", "evse_id", "-stack_level"]
        indexes = [models.Index(fields=["station", "profile_id", "source"], name="profile_station_id_source")]

    def __str__(self) -> str:
        return f"{self.station_id}/{self.evse_id} profile {self.profile_id} ({self.purpose})"


class DerControl(models.Model):
    """An OCPP 2.1 DER control (SetDERControl from the CSMS, or ReportDERControl from the station)."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="der_controls")
    control_id = models.CharField(max_length=36)
    control_type = models.CharField(max_length=32)
    is_default = models.BooleanField(default=False)
    is_superseded = models.BooleanField(default=False)
    source = models.CharField(max_length=8, choices=ProfileSource.choices)
    status = models.CharField(max_length=16, blank=True, help_text="station's answer when set by the CSMS")
    started = models.BooleanField(null=True, blank=True, help_text="last NotifyDERStartStop: running or not")
    payload = models.JSONField()
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ["station", "control_type", "-recorded_at"]
        indexes = [models.Index(fields=["station", "control_id"], name="dercontrol_station_id")]

    def __str__(self) -> str:
        return f"{self.station_id} DER {self.control_type} {self.control_id}"


class DerAlarm(models.Model):
    """NotifyDERAlarm: a grid event the station's DER function detected."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="der_alarms")
    control_type = models.CharField(max_length=32)
    grid_event_fault = models.CharField(max_length=32, blank=True)
    alarm_ended = models.BooleanField(default=False)
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField()
    extra_info = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-timestamp"]
        indexes = [models.Index(fields=["station", "timestamp"], name="deralarm_station_ts")]

    def __str__(self) -> str:
        return f"{self.station_id} DER alarm {self.control_type} {self.grid_event_fault}"


class StationCommand(models.Model):
    """Audit trail of every command sent (or refused) to a station: who, when, which station, what, and the answer.

    Written by ``chargers.services.station_commands.station_command_record``: ``station_call`` records every call
    it makes, the call endpoint (``fleet.station_api``) the commands it refuses. Rows are never edited.
    """

    class Outcome(models.TextChoices):
        ANSWERED = "answered", "answered (CALLRESULT)"
        CALL_ERROR = "call_error", "CALLERROR"
        TIMEOUT = "timeout", "no answer in time"
        OFFLINE = "offline", "station offline"
        REFUSED = "refused", "refused before sending (permission or payload)"

    station = models.ForeignKey(Station, null=True, on_delete=models.SET_NULL, related_name="commands")
    station_ident = models.CharField(max_length=48, db_index=True, help_text="the station id as asked for")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="station_commands"
    )
    actor_label = models.CharField(max_length=150, help_text="who: username, API key name or system component")
    action = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    answer = models.JSONField(null=True, blank=True, help_text="the station's CALLRESULT payload")
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField(db_index=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} -> {self.station_ident} by {self.actor_label} ({self.outcome})"


class CertificateUse(models.TextChoices):
    STATION = "Station"  # a station's TLS client certificate (security profile 3)
    SERVER = "Server"  # the CSMS's TLS server certificate
    FIRMWARE = "Firmware"  # signs firmware and configuration bundles (codeSigning; manage.py firmware signing-cert)
    SECC = "SECC"  # a charger's ISO 15118-20 TLS server certificate towards the car (manage.py pki secc-cert)


class PkiCertificate(models.Model):
    """Every certificate the built-in PKI issued (chargers.pki), and its revocation: the CRL and the profile-3
    handshake read this register (a certificate it does not know or marks revoked is refused)."""

    serial = models.CharField(max_length=40, unique=True, help_text="serial number, lower-case hex")
    use = models.CharField(max_length=8, choices=CertificateUse.choices)
    subject_cn = models.CharField(max_length=64, help_text="station id for station certificates, host for servers")
    station = models.ForeignKey(Station, null=True, blank=True, on_delete=models.SET_NULL, related_name="certificates")
    fingerprint_sha256 = models.CharField(max_length=64)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    issued_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revocation_reason = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["subject_cn"], name="pkicert_subject_cn")]

    def __str__(self) -> str:
        return f"{self.use} {self.subject_cn} {self.serial}"


class CertificateSigning(models.Model):
    """One SignCertificate a station sent, what the CSMS answered and, when it signed, the delivery of the certificate.

    Written by ``chargers.handlers.certificate_signing`` (the request and the answer, in the station's batch) and
    ``chargers.services.certificates`` (issuance, then CertificateSigned, after that batch's COMMIT). Rows of the last
    day count towards ``PKI_SIGN_PER_DAY``.
    """

    class Status(models.TextChoices):
        REFUSED = "refused", "refused (answered Rejected)"
        ACCEPTED = "accepted", "accepted, certificate not issued yet"
        ISSUED = "issued", "issued, CertificateSigned not delivered yet"
        DELIVERED = "delivered", "delivered, the station accepted it"
        STATION_REJECTED = "station_rejected", "delivered, the station answered Rejected"
        FAILED = "failed", "not delivered (gave up)"

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="certificate_signings")
    received_at = models.DateTimeField()
    certificate_type = models.CharField(max_length=32, blank=True, help_text="as requested; empty: not given")
    request_id = models.IntegerField(null=True, blank=True, help_text="OCPP 2.1 requestId, echoed in CertificateSigned")
    csr = models.TextField(blank=True, help_text="the PEM CSR as received (schema: up to 5500 characters)")
    status = models.CharField(max_length=16, choices=Status.choices)
    reason_code = models.CharField(max_length=20, blank=True, help_text="statusInfo.reasonCode of a refusal")
    reason = models.CharField(max_length=255, blank=True)
    certificate = models.ForeignKey(
        "PkiCertificate", null=True, blank=True, on_delete=models.SET_NULL, related_name="signings"
    )
    certificate_chain = models.TextField(blank=True, help_text="leaf + sub-CA PEM, as sent in CertificateSigned")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="CertificateSigned calls made")
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="a delivery in progress holds it until then")
    delivered_at = models.DateTimeField(null=True, blank=True)
    answer = models.JSONField(null=True, blank=True, help_text="the station's CertificateSigned answer")
    over_tls = models.BooleanField(
        default=False,
        help_text="the request came over TLS (wss://); certificates from plain ws:// are revoked at profile 3",
    )

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["station", "received_at"], name="certsigning_station_received"),
            models.Index(fields=["status", "received_at"], name="certsigning_status_received"),
        ]

    def __str__(self) -> str:
        return f"{self.station_id} SignCertificate {self.received_at:%Y-%m-%d %H:%M} {self.status}"


class InstalledCertificate(models.Model):
    """A certificate a station reports as installed (GetInstalledCertificateIds), or installed through the CSMS
    (InstallCertificate accepted): its OCPP CertificateHashData, type and child chain. Kept per station by
    ``chargers.services.installed_certificates``; DeleteCertificate removes the row."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="installed_certificates")
    certificate_type = models.CharField(max_length=32, help_text="GetCertificateIdUseEnumType, e.g. V2GRootCertificate")
    hash_algorithm = models.CharField(max_length=8)
    issuer_name_hash = models.CharField(max_length=128)
    issuer_key_hash = models.CharField(max_length=128)
    serial_number = models.CharField(max_length=40, help_text="hex, no 0x, no leading zeroes (as reported)")
    child_certificates = models.JSONField(
        default=list, blank=True, help_text="childCertificateHashData of a V2GCertificateChain"
    )
    reported_at = models.DateTimeField(help_text="when the station last reported it (or accepted its installation)")

    class Meta:
        ordering = ["station", "certificate_type", "serial_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["station", "hash_algorithm", "issuer_name_hash", "issuer_key_hash", "serial_number"],
                name="installedcert_unique_per_station",
            )
        ]

    def __str__(self) -> str:
        return f"{self.station_id} {self.certificate_type} {self.serial_number}"

    def hash_data(self) -> dict[str, str]:
        """The OCPP CertificateHashDataType naming this certificate (what DeleteCertificate sends)."""
        return {
            "hashAlgorithm": self.hash_algorithm,
            "issuerNameHash": self.issuer_name_hash,
            "issuerKeyHash": self.issuer_key_hash,
            "serialNumber": self.serial_number,
        }
