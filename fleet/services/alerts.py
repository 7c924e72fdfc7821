"""Fleet alerts: each condition raised once when it starts and cleared once when it ends, never re-raised per cycle.

:func:`alerts_sync` (the beat task ``fleet.alerts_sync`` runs it) reads what is true now -- cars near their floor,
stations offline, grid trips (open DER alarms), over-temperature, departure targets at risk -- and diffs it against
the open :class:`~fleet.models.FleetAlert` rows: a new condition opens a row, a condition gone closes its row, a
condition still there leaves its row untouched. Thresholds have hysteresis (raise at one level, clear past another)
so a value hovering on the line does not raise and clear on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction

from chargers.models import DerAlarm, Station
from fleet.models import AlertKind, FleetAlert, StationOwnership, Vehicle
from fleet.numerics.departure import departure_outlook
from fleet.selectors import plugged_in_snapshots

NEAR_FLOOR_RAISE_PCT = 5.0  # SoC within this many points above the floor raises ...
NEAR_FLOOR_CLEAR_PCT = 8.0  # ... and it clears only once SoC is this far above it
OVER_TEMPERATURE_RAISE_C = 45.0
OVER_TEMPERATURE_CLEAR_C = 42.0
TRIP_MAX_AGE = timedelta(hours=24)  # a DER alarm never reported ended is forgotten after this


@dataclass(frozen=True, slots=True)
class Condition:
    organisation_id: int
    kind: str
    subject: str
    message: str
    vehicle_id: int | None = None
    station_id: str = ""


@dataclass(frozen=True, slots=True)
class SyncResult:
    raised: int
    cleared: int
    open: int


def alert_conditions(*, now: datetime, open_keys: set[tuple[str, str]] | None = None) -> list[Condition]:
    """Every alert condition true at ``now`` (``open_keys``: the (kind, subject) pairs already open, for
    hysteresis: an open alert stays until its clear threshold is passed)."""
    open_keys = open_keys or set()
    out: list[Condition] = []
    snapshots = plugged_in_snapshots(at=now)
    orgs = dict(
        Vehicle.objects.filter(id__in=[s.vehicle_id for s in snapshots]).values_list("id", "fleet__organisation")
    )
    names = dict(Vehicle.objects.filter(id__in=orgs).values_list("id", "name"))
    for snap in snapshots:
        org = orgs.get(snap.vehicle_id)
        if org is None:
            continue
        subject = f"vehicle:{snap.vehicle_id}"
        name = names.get(snap.vehicle_id, str(snap.vehicle_id))
        capacity = max(snap.capacity_wh, 1)
        above_pct = 100 * (snap.soc_wh - snap.floor_wh) / capacity
        limit = NEAR_FLOOR_CLEAR_PCT if (AlertKind.NEAR_FLOOR, subject) in open_keys else NEAR_FLOOR_RAISE_PCT
        if above_pct <= limit:
            out.append(
                Condition(
                    org,
                    AlertKind.NEAR_FLOOR,
                    subject,
                    f"{name} is at {100 * snap.soc_wh / capacity:.0f} %, floor {100 * snap.floor_wh / capacity:.0f} %",
                    snap.vehicle_id,
                    snap.station_id or "",
                )
            )
        hot = (
            OVER_TEMPERATURE_CLEAR_C if (AlertKind.OVER_TEMPERATURE, subject) in open_keys else OVER_TEMPERATURE_RAISE_C
        )
        if snap.temperature_c >= hot:
            out.append(
                Condition(
                    org,
                    AlertKind.OVER_TEMPERATURE,
                    subject,
                    f"{name} pack at {snap.temperature_c:.0f} °C (limit {OVER_TEMPERATURE_RAISE_C:.0f} °C)",
                    snap.vehicle_id,
                    snap.station_id or "",
                )
            )
        outlook = departure_outlook(snap, now=now)
        if outlook.at_risk and snap.departure is not None:
            out.append(
                Condition(
                    org,
                    AlertKind.DEPARTURE_AT_RISK,
                    subject,
                    f"{name} leaves {snap.departure:%a %H:%M} UTC: at best {outlook.projected_pct:.0f} % of "
                    f"{outlook.target_pct:.0f} % target",
                    snap.vehicle_id,
                    snap.station_id or "",
                )
            )
    owned = dict(StationOwnership.objects.values_list("station__station_id", "organisation_id"))
    for station_id in Station.objects.filter(station_id__in=owned, online=False).values_list("station_id", flat=True):
        out.append(
            Condition(
                owned[station_id],
                AlertKind.STATION_OFFLINE,
                f"station:{station_id}",
                f"{station_id} is offline",
                station_id=station_id,
            )
        )
    newest: dict[tuple[str, str], tuple[bool, datetime]] = {}
    alarms = DerAlarm.objects.filter(station__station_id__in=owned, timestamp__gte=now - TRIP_MAX_AGE).order_by(
        "timestamp", "id"
    )
    for station_id, control_type, ended, at in alarms.values_list(
        "station__station_id", "control_type", "alarm_ended", "timestamp"
    ):
        newest[(station_id, control_type)] = (ended, at)
    tripped: dict[str, list[str]] = {}
    for (station_id, control_type), (ended, _) in newest.items():
        if not ended:
            tripped.setdefault(station_id, []).append(control_type)
    for station_id, types in sorted(tripped.items()):
        out.append(
            Condition(
                owned[station_id],
                AlertKind.TRIP,
                f"station:{station_id}",
                f"{station_id} tripped ({', '.join(sorted(types))})",
                station_id=station_id,
            )
        )
    return out


def alerts_sync(*, now: datetime) -> SyncResult:
    """Open a row for each new condition, close the rows of conditions gone; leave the others alone."""
    open_rows = {(a.kind, a.subject): a for a in FleetAlert.objects.filter(cleared_at__isnull=True)}
    current = {(c.kind, c.subject): c for c in alert_conditions(now=now, open_keys=set(open_rows))}
    raised = 0
    for key, cond in current.items():
        if key in open_rows:
            continue
        try:
            with transaction.atomic():
                FleetAlert.objects.create(
                    organisation_id=cond.organisation_id,
                    kind=cond.kind,
                    subject=cond.subject,
                    vehicle_id=cond.vehicle_id,
                    station_id=cond.station_id,
                    message=cond.message[:255],
                    raised_at=now,
                )
            raised += 1
        except IntegrityError:  # a concurrent sync raised it first: it is raised once either way
            continue
    gone = [row.pk for key, row in open_rows.items() if key not in current]
    cleared = FleetAlert.objects.filter(pk__in=gone, cleared_at__isnull=True).update(cleared_at=now)
    return SyncResult(raised=raised, cleared=cleared, open=len(current))
