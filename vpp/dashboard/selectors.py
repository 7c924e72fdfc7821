"""Reads for the fleet dashboard: one call assembles what a fleet manager sees, scoped to their organisations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import OuterRef, QuerySet, Subquery

from chargers.models import MeterValue, Station
from fleet.numerics.flexibility import fleet_flexibility
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.selectors import plugged_in_snapshots, stations_for, vehicles_for

#: The dashboard's horizon: the next 24 h in market intervals of 15 min.
HORIZON_INTERVALS = 96
INTERVAL_S = 900
_POWER_IMPORT = "Power.Active.Import"
_POWER_EXPORT = "Power.Active.Export"


@dataclass(frozen=True)
class DashboardOverview:
    at: datetime
    stations_total: int
    stations_online: int
    stations: list[dict[str, Any]]
    vehicles: list[dict[str, Any]]
    fleet_power_w: int
    flexibility: dict[str, object]


def interval_floor(moment: datetime, interval_s: int = INTERVAL_S) -> datetime:
    seconds = int(moment.timestamp()) // interval_s * interval_s
    return datetime.fromtimestamp(seconds, tz=moment.tzinfo)


def dashboard_overview(*, user: AbstractBaseUser | AnonymousUser, at: datetime) -> DashboardOverview:
    snapshots = plugged_in_snapshots(at=at, vehicles=vehicles_for(user))
    stations = _station_rows(stations_for(user))
    envelope = fleet_flexibility(
        snapshots, start=interval_floor(at), intervals=HORIZON_INTERVALS, interval_s=INTERVAL_S
    )
    return DashboardOverview(
        at=at,
        stations_total=len(stations),
        stations_online=sum(1 for s in stations if s["online"]),
        stations=stations,
        vehicles=[_vehicle_row(s) for s in snapshots],
        fleet_power_w=sum(s["power_w"] or 0 for s in stations),
        flexibility=envelope.total.as_dict(),
    )


def _station_rows(stations: QuerySet[Station]) -> list[dict[str, Any]]:
    """The user's stations with their newest net power reading (import - export, W), in one query."""

    def newest(measurand: str) -> Subquery:
        rows = MeterValue.objects.filter(station_id=OuterRef("pk"), measurand=measurand, phase="")
        return Subquery(rows.order_by("-timestamp", "-id").values("value")[:1])

    rows = (
        stations.annotate(import_w=newest(_POWER_IMPORT), export_w=newest(_POWER_EXPORT))
        .order_by("station_id")
        .values("station_id", "online", "last_seen", "ocpp_version", "import_w", "export_w")
    )
    out = []
    for row in rows:
        has_power = row["import_w"] is not None or row["export_w"] is not None
        out.append(
            {
                "station_id": row["station_id"],
                "online": row["online"],
                "last_seen": row["last_seen"],
                "ocpp_version": row["ocpp_version"],
                "power_w": (row["import_w"] or 0) - (row["export_w"] or 0) if has_power else None,
            }
        )
    return out


def _vehicle_row(snapshot: VehicleSnapshot) -> dict[str, Any]:
    return {
        "vehicle_id": snapshot.vehicle_id,
        "station_id": snapshot.station_id,
        "soc_pct": round(100 * snapshot.soc_fraction, 1),
        "floor_pct": round(100 * snapshot.floor_wh / snapshot.capacity_wh, 1) if snapshot.capacity_wh else 0.0,
        "departure": snapshot.departure,
        "target_pct": round(100 * snapshot.target_wh / snapshot.capacity_wh, 1) if snapshot.capacity_wh else 0.0,
        "max_charge_kw": snapshot.max_charge_w / 1000,
        "max_discharge_kw": snapshot.max_discharge_w / 1000,
    }
