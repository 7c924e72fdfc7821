"""The one table from a station-initiated OCPP action to its handler (``chargers.apply`` looks it up per CALL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chargers.batch import BatchContext
from chargers.handlers import (
    authorization,
    availability,
    certificate_signing,
    data_transfer,
    der,
    firmware_diagnostics,
    meter_values,
    plug_and_charge,
    provisioning,
    reservation,
    security,
    smart_charging,
    tariff_cost,
    transactions,
)
from chargers.handlers.common import Handler
from chargers.jobs import StationRef


def log_only(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """Any other valid action is kept in the message log only, answered with the schema's minimal response."""
    return {}


HANDLERS: dict[str, Handler] = {
    # Provisioning
    "BootNotification": provisioning.station_boot,
    "NotifyReport": provisioning.device_report_record,
    # Availability
    "Heartbeat": availability.heartbeat_answer,
    "StatusNotification": availability.connector_status_record,
    # Authorization
    "Authorize": authorization.id_token_authorize,
    # Transactions, meter values
    "TransactionEvent": transactions.transaction_event_record,
    "MeterValues": meter_values.meter_values_record,
    # Smart charging
    "NotifyEVChargingNeeds": smart_charging.ev_charging_needs_record,
    "NotifyChargingLimit": smart_charging.charging_limit_record,
    "ClearedChargingLimit": smart_charging.charging_limit_cleared_record,
    "ReportChargingProfiles": smart_charging.charging_profiles_report_record,
    "NotifyEVChargingSchedule": smart_charging.ev_charging_schedule_accept,
    "PullDynamicScheduleUpdate": smart_charging.dynamic_schedule_update_refuse,
    # DER control (2.1)
    "NotifyDERAlarm": der.der_alarm_record,
    "NotifyDERStartStop": der.der_start_stop_record,
    "ReportDERControl": der.der_controls_report_record,
    # Firmware management, diagnostics
    "FirmwareStatusNotification": firmware_diagnostics.firmware_status_record,
    "LogStatusNotification": firmware_diagnostics.log_status_record,
    "NotifyEvent": firmware_diagnostics.monitoring_events_record,
    "OpenPeriodicEventStream": firmware_diagnostics.periodic_event_stream_accept,
    # Security, ISO 15118 certificate management
    "SecurityEventNotification": security.security_event_record,
    "SignCertificate": certificate_signing.certificate_signing_answer,
    # Plug & Charge (ISO 15118 certificate management): answered from what PREFETCH found
    "GetCertificateChainStatus": plug_and_charge.chain_status_answer,
    "GetCertificateStatus": plug_and_charge.certificate_status_answer,
    "Get15118EVCertificate": plug_and_charge.ev_certificate_answer,
    # Reservation, data transfer, tariff and cost (2.1)
    "ReservationStatusUpdate": reservation.reservation_status_record,
    "DataTransfer": data_transfer.data_transfer_record,
    "VatNumberValidation": tariff_cost.vat_number_refuse,
}


#: What a handler needs from the network, fetched by the consumer before the call is submitted; the outcome reaches
#: the handler as ``BatchContext.looked_up`` (None: nothing to look up).
Prefetch = Callable[[StationRef, dict[str, Any]], Awaitable[Any]]

# Actions whose answer needs the network (OCSP responders, the contract-certificate provider). The consumer awaits
# the action's prefetch on the event loop, outside the group-commit batch (a network wait there would hold every
# station's writes), and submits the call with the outcome; its handler above reads it as ``ctx.looked_up``.
PREFETCH: dict[str, Prefetch] = {
    "Authorize": plug_and_charge.authorize_prefetch,  # only an Authorize with a contract certificate goes out
    "GetCertificateStatus": plug_and_charge.certificate_status_prefetch,
    "Get15118EVCertificate": plug_and_charge.ev_certificate_prefetch,
    "GetCertificateChainStatus": plug_and_charge.chain_status_prefetch,
}
