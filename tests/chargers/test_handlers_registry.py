"""The action -> handler table: station-initiated actions only, and what the actions without a handler answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chargers.apply import batch_apply
from chargers.handlers.registry import HANDLERS
from chargers.jobs import CallOutcome, IncomingCall, StationRef
from chargers.ocpp_j import STATION_ACTIONS
from tests.chargers.factories import StationFactory

# Every station-initiated action this CSMS handles beyond the message log. An action dropped from the table would
# silently fall back to "kept in the log only": pin the whole set.
HANDLED = {
    "BootNotification", "NotifyReport", "Heartbeat", "StatusNotification", "Authorize", "TransactionEvent",
    "MeterValues", "NotifyEVChargingNeeds", "NotifyChargingLimit", "ClearedChargingLimit", "ReportChargingProfiles",
    "NotifyEVChargingSchedule", "PullDynamicScheduleUpdate", "NotifyDERAlarm", "NotifyDERStartStop",
    "ReportDERControl", "FirmwareStatusNotification", "LogStatusNotification", "NotifyEvent",
    "OpenPeriodicEventStream", "SecurityEventNotification", "GetCertificateChainStatus", "SignCertificate",
    "GetCertificateStatus", "Get15118EVCertificate", "ReservationStatusUpdate", "DataTransfer", "VatNumberValidation",
}  # fmt: skip


def test_the_table_handles_exactly_the_actions_this_csms_serves() -> None:
    assert set(HANDLERS) == HANDLED


def test_every_registered_action_is_one_a_station_sends() -> None:
    station_actions = STATION_ACTIONS["2.0.1"] | STATION_ACTIONS["2.1"]
    assert set(HANDLERS) <= set(station_actions)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("action", "payload", "answer"),
    [
        # Plug & Charge calls submitted without their network look-up (chargers.handlers.plug_and_charge): Failed
        (
            "Get15118EVCertificate",
            {},
            {
                "status": "Failed",
                "exiResponse": "",
                "statusInfo": {"reasonCode": "NoResponse", "additionalInfo": "the provider was not asked"},
            },
        ),
        (
            "GetCertificateStatus",
            {},
            {
                "status": "Failed",
                "statusInfo": {"reasonCode": "NoResponse", "additionalInfo": "the responder was not asked"},
            },
        ),
        ("NotifyEVChargingSchedule", {}, {"status": "Accepted"}),
        ("OpenPeriodicEventStream", {}, {"status": "Accepted"}),
        ("PullDynamicScheduleUpdate", {}, {"status": "Rejected"}),
        ("VatNumberValidation", {"vatNumber": "NL123"}, {"status": "Rejected", "vatNumber": "NL123"}),
        ("NotifyMonitoringReport", {}, {}),  # no handler: kept in the message log only
    ],
)
def test_actions_this_csms_does_not_serve_get_the_minimal_truthful_answer(
    action: str, payload: dict[str, Any], answer: dict[str, Any]
) -> None:
    station = StationFactory.create()
    ref = StationRef(pk=station.pk, station_id=station.station_id, version="2.1")
    call = IncomingCall(ref, "m-1", action, payload, datetime.now(UTC))
    assert batch_apply([call]) == [CallOutcome(payload=answer)]
