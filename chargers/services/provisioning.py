"""The operator provisions stations and identity tokens (``manage.py idtoken add``; ``manage.py station add`` is
fleet's: ``fleet.services.stations_provision`` adds the owning organisation).

Not OCPP's Provisioning block, which is what a station sends (BootNotification, NotifyReport): that is
``chargers.handlers.provisioning``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from chargers.models import BootStatus, IdToken, SecurityProfile, Station, StationEvent, StationEventKind
from chargers.passwords import password_hash
from chargers.services.certificates import station_certificates_revoke_insecure
from chargers.services.password_rotation import (
    ADOPTED,
    password_generate,
    rotation_payload,
    rotation_status,
)
from chargers.services.station_call import StationCallError, StationUnknown, station_call

# OCPP 2.0.1/2.1 B02: the CSMS may ask a Pending station to boot again at once (F06, TriggerMessage BootNotification).
BOOT_TRIGGER = {"requestedMessage": "BootNotification"}


@dataclass(frozen=True)
class StationAccepted:
    previous: str  # the registration status before
    triggered: bool  # a TriggerMessage BootNotification was sent and the station accepted it
    note: str = ""  # why no boot was triggered, if none was


def station_accept(
    *, station_id: str, actor_user_id: int | None, actor_label: str, trigger: bool = True, timeout: float | None = None
) -> StationAccepted:
    """An operator accepts a Pending (or Rejected) station: it is Accepted at its next BootNotification.

    Recorded as a ``Registration`` station event naming the operator. With ``trigger`` and the station online, it
    is asked to boot now (TriggerMessage BootNotification, through ``station_call``, audited as the operator);
    without ``trigger`` the caller sends that itself (the command line without a shared channel layer).
    Raises StationUnknown.
    """
    with transaction.atomic():
        row = Station.objects.select_for_update().filter(station_id=station_id).first()
        if row is None:
            raise StationUnknown(station_id)
        previous = row.boot_status
        if previous != BootStatus.ACCEPTED:
            Station.objects.filter(pk=row.pk).update(boot_status=BootStatus.ACCEPTED)
            now = timezone.now()
            StationEvent.objects.create(
                station=row,
                kind=StationEventKind.REGISTRATION,
                timestamp=now,
                received_at=now,
                summary=f"{previous} -> Accepted by {actor_label}"[:255],
                data={"previous": previous, "status": BootStatus.ACCEPTED, "actor": actor_label, "user": actor_user_id},
            )
    if previous == BootStatus.ACCEPTED:
        return StationAccepted(previous, False, "already accepted")
    if not trigger:
        return StationAccepted(previous, False, "boot not triggered")
    if not row.online:
        return StationAccepted(previous, False, "offline: accepted at its next boot")
    try:
        answer = station_call(
            station_id=station_id,
            action="TriggerMessage",
            payload=BOOT_TRIGGER,
            actor_user_id=actor_user_id,
            actor_label=actor_label,
            timeout=timeout,
        )
    except StationCallError as exc:
        return StationAccepted(previous, False, f"TriggerMessage failed ({type(exc).__name__}: {exc}); "
                                                "accepted at its next boot")  # fmt: skip
    if answer.get("status") != "Accepted":
        return StationAccepted(previous, False, f"TriggerMessage {answer.get('status')}; accepted at its next boot")
    return StationAccepted(previous, True)


def stations_add(
    *,
    station_ids: Sequence[str],
    password: str | Mapping[str, str],
    update: bool = False,
    boot_status: str = BootStatus.ACCEPTED,
    security_profile: int | None = None,
) -> tuple[int, int]:
    """Create stations (one bulk insert for a whole fleet); ``update`` also resets existing ones' password (and
    security profile, when one is given). New stations default to profile 1.

    ``password``: one for all, or one per station id (a mapping covering every id, e.g. from ``password_generate``).
    Returns (created, updated). Raises WeakStationPassword for a password outside 16-40 characters.
    """

    def raw(sid: str) -> str:
        return password if isinstance(password, str) else password[sid]

    for candidate in [password] if isinstance(password, str) else [raw(sid) for sid in station_ids]:
        password_hash(candidate)  # validate all before touching anything
    with transaction.atomic():
        existing = set(Station.objects.filter(station_id__in=station_ids).values_list("station_id", flat=True))
        new = [
            Station(
                station_id=sid,
                password_hash=password_hash(raw(sid)),
                boot_status=boot_status,
                security_profile=security_profile or SecurityProfile.BASIC,
            )
            for sid in dict.fromkeys(station_ids)
            if sid not in existing
        ]
        Station.objects.bulk_create(new, batch_size=1000)
        updated = 0
        raised: list[str] = []  # to profile 3: certificates from CSRs sent over ws:// are revoked
        if update and existing:
            # One salted hash per station; bulk_update keeps it to a few statements for a whole fleet.
            rows = list(Station.objects.filter(station_id__in=existing))
            if security_profile == SecurityProfile.TLS_CLIENT_CERT:
                raised = [row.station_id for row in rows if row.security_profile < security_profile]
            for row in rows:
                row.set_password(raw(row.station_id))
                row.boot_status = boot_status
                if security_profile is not None:
                    row.security_profile = security_profile
            fields = ["password_hash", "boot_status", *(["security_profile"] if security_profile is not None else [])]
            updated = Station.objects.bulk_update(rows, fields, batch_size=1000)
        if raised:
            station_certificates_revoke_insecure(station_ids=raised, actor="security profile raised to 3")
    return len(new), updated


@dataclass(frozen=True)
class PasswordRotation:
    station_id: str
    status: str  # the station's attributeStatus for BasicAuthPassword, or the failure (e.g. StationOffline)
    adopted: bool  # the station accepted the new password: it uses it from its next connection on


def station_password_rotate(
    *, station_id: str, actor_user_id: int | None, actor_label: str, timeout: float | None = None
) -> PasswordRotation:
    """Send the station a new random BasicAuthPassword (SetVariables SecurityCtrlr.BasicAuthPassword).

    The password exists only in this call's memory and payload; ``station_call`` stores its hash as the pending
    password, audits the call (masked) and records the outcome as a PasswordRotated station event
    (chargers.services.password_rotation). Raises StationUnknown.
    """
    try:
        answer = station_call(
            station_id=station_id,
            action="SetVariables",
            payload=rotation_payload(password_generate()),
            actor_user_id=actor_user_id,
            actor_label=actor_label,
            timeout=timeout,
        )
    except StationUnknown:
        raise
    except StationCallError as exc:
        return PasswordRotation(station_id, type(exc).__name__, False)
    status = rotation_status(answer)
    return PasswordRotation(station_id, status, status in ADOPTED)


def id_token_add(*, token: str, type: str, status: str, group: str | None = None) -> IdToken:
    """Create or update an identity token; ``group`` names an existing or new group token of the same type."""
    group_row = None
    if group:
        group_row, _ = IdToken.objects.get_or_create(id_token=group, type=type)
    row, _ = IdToken.objects.update_or_create(
        id_token=token, type=type, defaults={"status": status, "group": group_row}
    )
    return row
