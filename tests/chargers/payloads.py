"""A valid request payload for every station-initiated OCPP 2.0.1 / 2.1 action (checked against the schemas)."""

from __future__ import annotations

from typing import Any

NOW = "2026-01-15T10:00:00Z"
LATER = "2026-01-15T18:00:00Z"

_SCHEDULE = {"id": 1, "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}
_METER = [
    {
        "timestamp": NOW,
        "sampledValue": [
            {"value": 12.5, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "kWh"}},
            {"value": -3600.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
            {"value": 64, "measurand": "SoC", "location": "EV"},
        ],
    }
]

COMMON: dict[str, dict[str, Any]] = {
    "BootNotification": {"chargingStation": {"model": "VX-1", "vendorName": "Acme"}, "reason": "PowerUp"},
    "Heartbeat": {},
    "StatusNotification": {"timestamp": NOW, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    "Authorize": {"idToken": {"idToken": "UNKNOWN-TOKEN", "type": "ISO14443"}},
    "MeterValues": {"evseId": 1, "meterValue": _METER},
    "TransactionEvent": {
        "eventType": "Started",
        "timestamp": NOW,
        "triggerReason": "CablePluggedIn",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "conf-tx-1", "chargingState": "EVConnected"},
        "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": "UNKNOWN-TOKEN", "type": "ISO14443"},
        "meterValue": _METER,
    },
    "NotifyReport": {
        "requestId": 1,
        "generatedAt": NOW,
        "seqNo": 0,
        "tbc": False,
        "reportData": [
            {
                "component": {"name": "SmartChargingCtrlr"},
                "variable": {"name": "Enabled"},
                "variableAttribute": [{"type": "Actual", "value": "true", "mutability": "ReadWrite"}],
                "variableCharacteristics": {"dataType": "boolean", "supportsMonitoring": False},
            },
            {
                "component": {"name": "EVSE", "evse": {"id": 1}},
                "variable": {"name": "Power"},
                "variableAttribute": [{"type": "MaxSet", "value": "11000"}],
                "variableCharacteristics": {"dataType": "decimal", "unit": "W", "supportsMonitoring": True},
            },
        ],
    },
    "NotifyEvent": {
        "generatedAt": NOW,
        "seqNo": 0,
        "eventData": [
            {
                "eventId": 1,
                "timestamp": NOW,
                "trigger": "Delta",
                "actualValue": "Faulted",
                "eventNotificationType": "HardWiredNotification",
                "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
                "variable": {"name": "AvailabilityState"},
            }
        ],
    },
    "NotifyEVChargingNeeds": {
        "evseId": 1,
        "chargingNeeds": {
            "requestedEnergyTransfer": "DC",
            "departureTime": LATER,
            "dcChargingParameters": {
                "evMaxCurrent": 125,
                "evMaxVoltage": 400,
                "energyAmount": 30000,
                "evMaxPower": 11000,
            },
        },
    },
    "NotifyChargingLimit": {"chargingLimit": {"chargingLimitSource": "SO", "isGridCritical": True}, "evseId": 1},
    "ClearedChargingLimit": {"chargingLimitSource": "SO", "evseId": 1},
    "ReportChargingProfiles": {
        "requestId": 7,
        "chargingLimitSource": "CSO",
        "evseId": 1,
        "tbc": False,
        "chargingProfile": [
            {
                "id": 11,
                "stackLevel": 1,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [{**_SCHEDULE, "startSchedule": NOW}],
            }
        ],
    },
    "SecurityEventNotification": {"type": "FirmwareUpdated", "timestamp": NOW, "techInfo": "v1.2.3"},
    "FirmwareStatusNotification": {"status": "Installed", "requestId": 3},
    "LogStatusNotification": {"status": "Uploaded", "requestId": 4},
    "DataTransfer": {"vendorId": "com.example", "messageId": "ping", "data": "hello"},
    "Get15118EVCertificate": {
        "iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef",
        "action": "Install",
        "exiRequest": "AAAA",
    },
    "GetCertificateStatus": {
        "ocspRequestData": {
            "hashAlgorithm": "SHA256",
            "issuerNameHash": "abc",
            "issuerKeyHash": "def",
            "serialNumber": "01",
            "responderURL": "http://ocsp.example",
        }
    },
    "SignCertificate": {"csr": "-----BEGIN CERTIFICATE REQUEST-----"},
    "NotifyCustomerInformation": {"data": "none", "seqNo": 0, "generatedAt": NOW, "requestId": 5, "tbc": False},
    "NotifyDisplayMessages": {"requestId": 6},
    "NotifyEVChargingSchedule": {"timeBase": NOW, "evseId": 1, "chargingSchedule": _SCHEDULE},
    "NotifyMonitoringReport": {"requestId": 8, "seqNo": 0, "generatedAt": NOW},
    "PublishFirmwareStatusNotification": {"status": "Idle"},
    "ReservationStatusUpdate": {"reservationId": 9, "reservationUpdateStatus": "Expired"},
}

V21_ONLY: dict[str, dict[str, Any]] = {
    "NotifyEVChargingNeeds": {
        "evseId": 1,
        "timestamp": NOW,
        "chargingNeeds": {
            "requestedEnergyTransfer": "DC_BPT",
            "departureTime": LATER,
            "controlMode": "ScheduledControl",
            "mobilityNeedsMode": "EVCC_SECC",
            "v2xChargingParameters": {
                "minChargePower": 0,
                "maxChargePower": 11000,
                "minDischargePower": 0,
                "maxDischargePower": 10000,
                "evTargetEnergyRequest": 40000,
                "evMinEnergyRequest": -20000,
                "evMaxEnergyRequest": 50000,
                "evMinV2XEnergyRequest": -15000,
                "evMaxV2XEnergyRequest": 45000,
                "targetSoC": 80,
            },
        },
    },
    "NotifyDERAlarm": {"controlType": "FreqDroop", "gridEventFault": "OverFrequency", "timestamp": NOW},
    "NotifyDERStartStop": {"controlId": "der-1", "started": True, "timestamp": NOW},
    "ReportDERControl": {
        "requestId": 10,
        "tbc": False,
        "freqDroop": [
            {
                "id": "droop-1",
                "isDefault": True,
                "isSuperseded": False,
                "freqDroop": {
                    "priority": 1,
                    "overFreq": 50.2,
                    "underFreq": 49.8,
                    "overDroop": 5.0,
                    "underDroop": 5.0,
                    "responseTime": 1.0,
                },
            }
        ],
    },
    "BatterySwap": {
        "eventType": "BatteryIn",
        "requestId": 11,
        "idToken": {"idToken": "SWAP", "type": "Central"},
        "batteryData": [{"evseId": 1, "serialNumber": "B-1", "soC": 80.0, "soH": 97.0}],
    },
    "ClosePeriodicEventStream": {"id": 1},
    "GetCertificateChainStatus": {
        "certificateStatusRequests": [
            {
                "source": "OCSP",
                "urls": ["http://ocsp.example"],
                "certificateHashData": {
                    "hashAlgorithm": "SHA256",
                    "issuerNameHash": "abc",
                    "issuerKeyHash": "def",
                    "serialNumber": "01",
                },
            }
        ]
    },
    "NotifyPriorityCharging": {"transactionId": "conf-tx-1", "activated": True},
    "NotifySettlement": {"pspRef": "psp-1", "status": "Settled", "settlementAmount": 12.5, "settlementTime": NOW},
    "OpenPeriodicEventStream": {"constantStreamData": {"id": 1, "variableMonitoringId": 2, "params": {}}},
    "PullDynamicScheduleUpdate": {"chargingProfileId": 11},
    "VatNumberValidation": {"vatNumber": "NL123456789B01"},
}

SEND_21 = {"NotifyPeriodicEventStream": {"id": 1, "pending": 0, "basetime": NOW, "data": [{"t": 0.0, "v": "7400"}]}}


def station_payloads(version: str) -> dict[str, dict[str, Any]]:
    return {**COMMON, **V21_ONLY} if version == "2.1" else dict(COMMON)
