"""fleet.commands: which OCPP actions only operators may send, and who may command which station."""

from __future__ import annotations

import os

import pytest

from chargers import ocpp_j
from fleet.commands import OPERATOR_ONLY_ACTIONS, command_refusal
from fleet.models import Membership, Role, StationOwnership
from tests.chargers.factories import StationFactory
from tests.fleet.factories import OrganisationFactory, UserFactory

# What a fleet manager may send to their own stations. Together with OPERATOR_ONLY_ACTIONS this is every
# CSMS-initiated action of OCPP 2.0.1 and 2.1: a new action fails the test below until someone places it.
EVERYDAY_ACTIONS = {
    "CancelReservation", "ChangeAvailability", "ChangeTransactionTariff", "ClearCache", "ClearChargingProfile",
    "ClearDisplayMessage", "ClearTariffs", "CostUpdated", "CustomerInformation", "GetBaseReport",
    "GetChargingProfiles", "GetCompositeSchedule", "GetDERControl", "GetDisplayMessages",
    "GetInstalledCertificateIds", "GetLocalListVersion", "GetMonitoringReport", "GetPeriodicEventStream",
    "GetReport", "GetTariffs", "GetTransactionStatus", "GetVariables", "NotifyWebPaymentStarted",
    "RequestBatterySwap", "RequestStartTransaction", "RequestStopTransaction", "ReserveNow", "SendLocalList",
    "SetChargingProfile", "SetDefaultTariff", "SetDisplayMessage", "TriggerMessage", "UnlockConnector",
    "UsePriorityCharging",
}  # fmt: skip


def _csms_actions() -> set[str]:
    actions = set()
    for version in ("2.0.1", "2.1"):
        folder = os.path.dirname(ocpp_j._schema_path(version, "Any"))
        names = (f.removesuffix("Request.json") for f in os.listdir(folder) if f.endswith("Request.json"))
        actions |= {name for name in names if ocpp_j.is_csms_action(version, name)}
    return actions


def test_every_csms_action_is_either_everyday_or_operator_only():
    operator_only = set(OPERATOR_ONLY_ACTIONS)
    assert operator_only.isdisjoint(EVERYDAY_ACTIONS)
    assert operator_only | EVERYDAY_ACTIONS == _csms_actions()


def test_the_operator_only_list_holds_grid_firmware_reset_and_security_actions():
    required = {"SetDERControl", "ClearDERControl", "UpdateFirmware", "PublishFirmware", "UnpublishFirmware",
                "Reset", "SetNetworkProfile", "SetVariables", "CertificateSigned", "InstallCertificate",
                "DeleteCertificate"}  # fmt: skip
    assert required <= set(OPERATOR_ONLY_ACTIONS)
    assert all(reason.strip() for reason in OPERATOR_ONLY_ACTIONS.values())


@pytest.mark.django_db
def test_only_fleet_managers_of_the_owner_and_operators_may_command_a_station():
    # Given a station, its organisation's fleet manager and bidding admin, another organisation's fleet manager
    owner, other = OrganisationFactory.create(), OrganisationFactory.create()
    station = StationFactory.create()
    StationOwnership.objects.create(station=station, organisation=owner)
    manager, bidder, stranger = UserFactory.create(), UserFactory.create(), UserFactory.create()
    Membership.objects.create(user=manager, organisation=owner, role=Role.FLEET_MANAGER)
    Membership.objects.create(user=bidder, organisation=owner, role=Role.BIDDING_ADMIN)
    Membership.objects.create(user=stranger, organisation=other, role=Role.FLEET_MANAGER)
    operator = UserFactory.create(is_staff=True)
    # Then the manager may send everyday actions, not operator-only ones; the operator may send both
    assert command_refusal(user=manager, station=station, action="SetChargingProfile") is None
    assert "operator-only" in str(command_refusal(user=manager, station=station, action="Reset"))
    assert command_refusal(user=operator, station=station, action="Reset") is None
    # And neither the bidding admin nor another organisation's manager may send anything
    assert command_refusal(user=bidder, station=station, action="SetChargingProfile") is not None
    assert command_refusal(user=stranger, station=station, action="SetChargingProfile") is not None
