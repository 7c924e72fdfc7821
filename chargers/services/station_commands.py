"""The audit trail of station commands: ``station_command_record`` writes one ``StationCommand`` row per attempt.

``station_call`` records every call it is asked to make (answered, CALLERROR, timeout, offline, refused for an
invalid payload); the layers above record the commands they refuse before calling (permissions). Rows are never
edited. Secrets a command carries (passwords in ``SetVariables`` or ``SetNetworkProfile``) are masked in the row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chargers.models import Station, StationCommand

MASK = "********"
#: CSMS-initiated actions whose requests may carry secrets (their MessageLog rows are masked too: chargers.apply).
SECRET_ACTIONS = frozenset({"SetVariables", "SetNetworkProfile"})


def station_command_record(
    *,
    station_ident: str,
    action: str,
    payload: dict[str, Any],
    outcome: str,
    actor_user_id: int | None,
    actor_label: str,
    requested_at: datetime,
    answer: dict[str, Any] | None = None,
    error: str = "",
    answered_at: datetime | None = None,
) -> StationCommand:
    """Append one audit row (the station is linked when it exists; ``station_ident`` keeps the id as asked for)."""
    station_pk = Station.objects.filter(station_id=station_ident).values_list("pk", flat=True).first()
    return StationCommand.objects.create(
        station_id=station_pk,
        station_ident=station_ident[:48],
        user_id=actor_user_id,
        actor_label=actor_label[:150],
        action=action[:64],
        payload=payload_masked(payload),
        outcome=outcome,
        answer=answer,
        error=error,
        requested_at=requested_at,
        answered_at=answered_at,
    )


def payload_masked(payload: Any) -> Any:
    """A copy of ``payload`` with secrets masked: any value under a key naming a secret (``basicAuthPassword``,
    ``apnPassword``, the VPN ``key``, ``simPin``) and the ``attributeValue`` of a variable whose name does
    (``SetVariables`` of ``BasicAuthPassword``)."""
    if isinstance(payload, list):
        return [payload_masked(item) for item in payload]
    if not isinstance(payload, dict):
        return payload
    variable = payload.get("variable")
    secret_variable = isinstance(variable, dict) and _names_a_secret(str(variable.get("name", "")))
    masked: dict[str, Any] = {}
    for key, value in payload.items():
        if _names_a_secret(key) or (secret_variable and key == "attributeValue"):
            masked[key] = MASK
        else:
            masked[key] = payload_masked(value)
    return masked


# Key and variable names that carry secrets in OCPP 2.0.1/2.1 payloads: basicAuthPassword, apnPassword, the VPN's
# shared ``key``, the SIM's ``simPin``, certificate private keys and any "secret".
_SECRET_NAMES = ("password", "secret", "simpin", "privatekey")


def _names_a_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered == "key" or any(part in lowered for part in _SECRET_NAMES)
