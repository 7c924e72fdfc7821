"""Stations as the fleet layer sees them: provisioned for an organisation, and moved between organisations. (The
CSMS below knows no organisations: ``chargers.services.provisioning`` creates the station, this records its owner.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from chargers.models import BootStatus, Station
from chargers.services.provisioning import stations_add
from fleet.models import (
    Organisation,
    StationOwnership,
)
from fleet.services.errors import FleetError

# --- Stations: provisioning and ownership ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnershipResult:
    assigned: int  # stations that got this owner (new rows or moved)
    elsewhere: list[str]  # stations left with another owner (``move=False``)


def station_ownership_set(
    *, station_ids: Sequence[str], organisation: Organisation, move: bool = True
) -> OwnershipResult:
    """Make ``organisation`` the owner of the stations (ids as in OCPP); with ``move=False`` a station another
    organisation owns keeps its owner (and is listed in ``elsewhere``). All or nothing: raises FleetError, changing
    nothing, when a station does not exist."""
    ids = list(dict.fromkeys(station_ids))
    with transaction.atomic():
        pks = dict(Station.objects.filter(station_id__in=ids).values_list("station_id", "pk"))
        unknown = [sid for sid in ids if sid not in pks]
        if unknown:
            raise FleetError(f"no such station: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
        owners = dict(
            StationOwnership.objects.select_for_update()
            .filter(station_id__in=pks.values())
            .values_list("station_id", "organisation_id")
        )
        new = [StationOwnership(station_id=pk, organisation=organisation) for pk in pks.values() if pk not in owners]
        StationOwnership.objects.bulk_create(new, batch_size=1000)
        others = [pk for pk, org_id in owners.items() if org_id != organisation.pk]
        if move and others:
            StationOwnership.objects.filter(station_id__in=others).update(
                organisation=organisation, assigned_at=timezone.now()
            )
    by_pk = {pk: sid for sid, pk in pks.items()}
    if move:
        return OwnershipResult(assigned=len(new) + len(others), elsewhere=[])
    return OwnershipResult(assigned=len(new), elsewhere=sorted(by_pk[pk] for pk in others))


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    created: int
    updated: int
    elsewhere: list[str]  # existing stations another organisation owns: left there (``station assign`` moves them)


def stations_provision(
    *,
    station_ids: Sequence[str],
    password: str | Mapping[str, str],
    organisation: Organisation,
    update: bool = False,
    boot_status: str = BootStatus.ACCEPTED,
    security_profile: int | None = None,
) -> ProvisionResult:
    """Create stations in the CSMS (``update``: also reset existing ones' password) owned by ``organisation``;
    existing stations without an owner get it too. ``password``: one for all or one per id (as ``stations_add``).
    One transaction. Raises WeakStationPassword."""
    with transaction.atomic():
        created, updated = stations_add(
            station_ids=station_ids,
            password=password,
            update=update,
            boot_status=boot_status,
            security_profile=security_profile,
        )
        owned = station_ownership_set(station_ids=station_ids, organisation=organisation, move=False)
    return ProvisionResult(created=created, updated=updated, elsewhere=owned.elsewhere)
