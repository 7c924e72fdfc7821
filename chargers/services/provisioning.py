"""The operator provisions stations and identity tokens (``manage.py idtoken add``; ``manage.py station add`` is
fleet's: ``fleet.services.stations_provision`` adds the owning organisation).

Not OCPP's Provisioning block, which is what a station sends (BootNotification, NotifyReport): that is
``chargers.handlers.provisioning``.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from chargers.models import BootStatus, IdToken, Station
from chargers.passwords import password_hash


def stations_add(
    *,
    station_ids: Sequence[str],
    password: str,
    update: bool = False,
    boot_status: str = BootStatus.ACCEPTED,
) -> tuple[int, int]:
    """Create stations (one bulk insert for a whole fleet); ``update`` also resets existing ones' password.

    Returns (created, updated). Raises WeakStationPassword for a password outside 16-40 characters.
    """
    password_hash(password)  # validate once before touching anything
    with transaction.atomic():
        existing = set(Station.objects.filter(station_id__in=station_ids).values_list("station_id", flat=True))
        new = [
            Station(station_id=sid, password_hash=password_hash(password), boot_status=boot_status)
            for sid in dict.fromkeys(station_ids)
            if sid not in existing
        ]
        Station.objects.bulk_create(new, batch_size=1000)
        updated = 0
        if update and existing:
            # One salted hash per station; bulk_update keeps it to a few statements for a whole fleet.
            rows = list(Station.objects.filter(station_id__in=existing))
            for row in rows:
                row.set_password(password)
                row.boot_status = boot_status
            updated = Station.objects.bulk_update(rows, ["password_hash", "boot_status"], batch_size=1000)
    return len(new), updated


def id_token_add(*, token: str, type: str, status: str, group: str | None = None) -> IdToken:
    """Create or update an identity token; ``group`` names an existing or new group token of the same type."""
    group_row = None
    if group:
        group_row, _ = IdToken.objects.get_or_create(id_token=group, type=type)
    row, _ = IdToken.objects.update_or_create(
        id_token=token, type=type, defaults={"status": status, "group": group_row}
    )
    return row
