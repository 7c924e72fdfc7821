"""Who may send which OCPP command to which station: the rules of ``POST /api/stations/<id>/call``.

Operators (the aggregator's staff) may send any CSMS-initiated action to any station. A fleet manager may send the
everyday ones (start/stop, charging profiles, availability, triggers, reads...) to the stations their organisation
owns, never those below. Any other member of the owning organisation sees the station but commands nothing. Every
refusal on a station the caller can see is audited (``StationCommand``, outcome ``refused``).
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet

from chargers.models import Station
from fleet.models import ApiKey, Membership, Role
from fleet.selectors import is_operator, stations_for

#: The one list of operator-only actions, each with why: grid protection and DER settings, firmware, resets,
#: credentials and security, and the channels the VPP itself delivers market services through. The reason is
#: returned to a refused caller. Anything not listed is an everyday command (``tests/fleet/test_commands.py``
#: pins the whole classification of OCPP 2.0.1 and 2.1's CSMS actions, so a new action must be placed).
OPERATOR_ONLY_ACTIONS: dict[str, str] = {
    "SetDERControl": "DER controls (frequency/voltage droop, trip settings) are grid protection set by the operator",
    "ClearDERControl": "clearing DER controls removes grid protection the operator set",
    "UpdateFirmware": "firmware changes what the station is certified to do on the grid",
    "PublishFirmware": "firmware distribution to local controllers is the operator's",
    "UnpublishFirmware": "firmware distribution to local controllers is the operator's",
    "Reset": "a reset drops every session on the station and can interrupt market delivery",
    "SetNetworkProfile": "network profiles carry the CSMS URL, security profile and BasicAuthPassword",
    "SetVariables": "variables include BasicAuthPassword, security profiles and DER/trip settings",
    "SetVariableMonitoring": "monitors feed the CSMS's grid and security alarms",
    "SetMonitoringBase": "monitors feed the CSMS's grid and security alarms",
    "SetMonitoringLevel": "monitors feed the CSMS's grid and security alarms",
    "ClearVariableMonitoring": "monitors feed the CSMS's grid and security alarms",
    "CertificateSigned": "station certificates are the security of the connection",
    "InstallCertificate": "root certificates decide whom the station trusts",
    "DeleteCertificate": "deleting certificates can cut the station off or weaken its security",
    "GetLog": "uploads the station's logs, security log included, to any URL the caller names",
    "UpdateDynamicSchedule": "dynamic schedules are the setpoint channel VPP dispatch delivers through",
    "AFRRSignal": "aFRR signals are regulation the VPP delivers to the grid operator",
    "AdjustPeriodicEventStream": "periodic event streams carry the metering that market delivery is settled on",
    "NotifyAllowedEnergyTransfer": "allowing bidirectional (V2G) transfer is governed by the grid connection",
}


def command_stations(user: AbstractBaseUser | AnonymousUser, auth: object) -> QuerySet[Station]:
    """The stations whose commands a request may read or send, as far as visibility goes: an operator's all, a
    member's their organisations' (any role), narrowed to the API key's organisation when the key names one."""
    stations = stations_for(user)
    if isinstance(auth, ApiKey) and auth.organisation_id is not None:
        stations = stations.filter(ownership__organisation_id=auth.organisation_id)
    return stations


def command_refusal(*, user: AbstractBaseUser | AnonymousUser, station: Station, action: str) -> str | None:
    """Why ``user`` may not send ``action`` to ``station`` (one they can see), or None when they may."""
    if is_operator(user):
        return None
    if user.pk is None:
        return "authentication required"
    fleet_manager = Membership.objects.filter(
        user_id=user.pk, organisation__station_ownerships__station=station, role=Role.FLEET_MANAGER
    ).exists()
    if not fleet_manager:
        return "only the owning organisation's fleet managers and operators command its stations"
    reason = OPERATOR_ONLY_ACTIONS.get(action)
    if reason is not None:
        return f"{action} is operator-only: {reason}"
    return None
