"""The audit trail of station commands: one row per attempt, secrets masked."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from chargers.services.station_commands import MASK, payload_masked, station_command_record
from tests.chargers.factories import StationFactory


def test_passwords_in_a_payload_are_masked():
    set_variables = {
        "setVariableData": [
            {"attributeValue": "new-secret-0123456", "component": {"name": "SecurityCtrlr"},
             "variable": {"name": "BasicAuthPassword"}},
            {"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        ]
    }  # fmt: skip
    masked = payload_masked(set_variables)
    assert [d["attributeValue"] for d in masked["setVariableData"]] == [MASK, "60"]
    network: dict[str, Any] = {
        "configurationSlot": 1,
        "connectionData": {"basicAuthPassword": "x" * 20, "apn": {"apnPassword": "y"}},
    }
    masked_network = payload_masked(network)
    assert masked_network["connectionData"]["basicAuthPassword"] == MASK
    assert masked_network["connectionData"]["apn"]["apnPassword"] == MASK
    assert network["connectionData"]["basicAuthPassword"] == "x" * 20  # the caller's payload is left alone


@pytest.mark.django_db
def test_a_record_links_the_station_when_it_exists_and_keeps_the_id_asked_for():
    station = StationFactory.create(station_id="cs-audit")
    now = timezone.now()
    known = station_command_record(
        station_ident="cs-audit", action="Reset", payload={}, outcome="offline", actor_user_id=None,
        actor_label="cli:alice", requested_at=now, error="not connected",
    )  # fmt: skip
    unknown = station_command_record(
        station_ident="cs-gone", action="Reset", payload={}, outcome="refused", actor_user_id=None,
        actor_label="cli:alice", requested_at=now,
    )  # fmt: skip
    assert (known.station_id, known.station_ident, known.error) == (station.pk, "cs-audit", "not connected")
    assert (unknown.station_id, unknown.station_ident) == (None, "cs-gone")


def test_the_vpn_key_and_the_sim_pin_of_a_network_profile_are_masked():
    # SetNetworkProfile carries the VPN's shared secret under "key" and the SIM's PIN under "simPin" (OCPP 2.0.1).
    profile = {
        "configurationSlot": 1,
        "connectionData": {
            "ocppCsmsUrl": "wss://csms.example/ocpp",
            "vpn": {"server": "vpn.example", "user": "u", "password": "p", "key": "shared-secret", "type": "IPSec"},
            "apn": {"apn": "internet", "apnAuthentication": "AUTO", "simPin": 1234},
        },
    }
    masked = payload_masked(profile)["connectionData"]
    assert (masked["vpn"]["key"], masked["vpn"]["password"], masked["apn"]["simPin"]) == (MASK, MASK, MASK)
    assert masked["vpn"]["server"] == "vpn.example"
    assert masked["apn"]["apn"] == "internet"
