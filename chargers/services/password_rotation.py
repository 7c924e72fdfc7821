"""Station password rotation (OCPP 2.0.1/2.1 A01): the CSMS sets ``SecurityCtrlr.BasicAuthPassword`` with
SetVariables; once the station accepts, it uses the new password from its next connection on.

``station_call`` calls the hooks here for every SetVariables that sets BasicAuthPassword, whoever sends it (the
``station rotate-password`` command, ``station call``, the API). The new password travels in the call's payload only;
what is stored is its salted hash, as the station's *pending* password:

- stored before the call is sent, because a station that accepts disconnects and reconnects at once with the new
  password, possibly before its answer has been handled here; only the station and this call know the password, so
  honouring it a moment early lets no one else in;
- kept when the station answers Accepted (or RebootRequired: used after its reboot), and when the call timed out
  (the station may have applied it: refusing it then would lock the station out);
- dropped when the station refuses it, answers with a CALLERROR, or the call was not sent.

Until the station connects with the pending password both are valid; its first connection with the new one makes
it the only one (``chargers.handshake.authenticate_many``). Each step is a ``PasswordRotated`` station event.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from chargers.models import Station, StationEvent, StationEventKind
from chargers.passwords import password_hash

COMPONENT = "SecurityCtrlr"
VARIABLE = "BasicAuthPassword"
ADOPTED = frozenset({"Accepted", "RebootRequired"})
GENERATED_LENGTH = 32  # within OCPP's 16-40 characters; letters and digits, ~190 bits
_ALPHABET = string.ascii_letters + string.digits


def password_generate() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(GENERATED_LENGTH))


def rotation_payload(raw: str) -> dict[str, Any]:
    """The SetVariables request that sets ``raw`` as the station's BasicAuthPassword."""
    item = {"component": {"name": COMPONENT}, "variable": {"name": VARIABLE}, "attributeValue": raw}
    return {"setVariableData": [item]}


def rotation_password(action: str, payload: dict[str, Any]) -> str | None:
    """The BasicAuthPassword a SetVariables payload sets, else None."""
    if action != "SetVariables":
        return None
    for item in payload.get("setVariableData", []) or []:
        if _names_password(item):
            return str(item.get("attributeValue", ""))
    return None


@dataclass(frozen=True, slots=True)
class Rotation:
    station_id: str
    pending_hash: str


def rotation_begin(*, station_id: str, raw: str) -> Rotation:
    """Store ``raw``'s hash as the station's pending password, before the call goes out.

    Raises WeakStationPassword (the call must not be sent: a station applying it could never be let in again)."""
    pending = password_hash(raw)
    Station.objects.filter(station_id=station_id).update(
        password_pending_hash=pending, password_pending_at=timezone.now()
    )
    return Rotation(station_id, pending)


def rotation_answered(rotation: Rotation, *, answer: dict[str, Any] | None, actor_label: str, failure: str = "") -> str:
    """Keep or drop the pending password after the station's answer (``answer`` None: ``failure`` says why).
    Returns the station's status for the variable, or the failure (e.g. ``CallTimeout``)."""
    status = rotation_status(answer) if answer is not None else failure
    keep = status in ADOPTED or status == "CallTimeout"
    if not keep:  # only if it is still this rotation's: a later one or the station's reconnect may have moved it
        Station.objects.filter(station_id=rotation.station_id, password_pending_hash=rotation.pending_hash).update(
            password_pending_hash="", password_pending_at=None
        )
    if status in ADOPTED:
        summary = f"new password {status} (by {actor_label}); the old one stays valid until the station uses it"
    elif keep:
        summary = f"new password sent (by {actor_label}), no answer: both stay valid until the station uses one"
    else:
        summary = f"new password not taken ({status}, by {actor_label}); the old one stays"
    _event(rotation.station_id, summary, {"status": status, "actor": actor_label})
    return status


def rotation_adopt_on_connect(station: Station) -> None:
    """The station connected with its pending password: it becomes the password, the old one is dropped.

    Conditional on the pending hash still being the one checked, so two simultaneous handshakes promote it once."""
    promoted = Station.objects.filter(pk=station.pk, password_pending_hash=station.password_pending_hash).update(
        password_hash=station.password_pending_hash, password_pending_hash="", password_pending_at=None
    )
    if promoted:
        _event(station.station_id, "connected with the new password; the old one is no longer valid", {})


def _names_password(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    component, variable = item.get("component") or {}, item.get("variable") or {}
    return (
        component.get("name") == COMPONENT
        and variable.get("name") == VARIABLE
        and item.get("attributeType", "Actual") == "Actual"
    )


def rotation_status(answer: dict[str, Any]) -> str:
    """The station's attributeStatus for BasicAuthPassword in a SetVariables answer ("NoResult" if missing)."""
    for result in answer.get("setVariableResult", []) or []:
        if _names_password(result):
            return str(result.get("attributeStatus", ""))
    return "NoResult"


def _event(station_id: str, summary: str, data: dict[str, Any]) -> None:
    station = Station.objects.filter(station_id=station_id).only("pk").first()
    if station is None:
        return
    now = timezone.now()
    StationEvent.objects.create(
        station=station,
        kind=StationEventKind.PASSWORD_ROTATED,
        timestamp=now,
        received_at=now,
        summary=summary[:255],
        data=data,
    )
