"""Reads for real-time peak shaving: the state a :class:`vpp.peak.shaver.SiteShaver` keeps in memory."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from chargers.models import Station, Transaction
from fleet.numerics.arrays import FleetArrays
from fleet.selectors import plugged_in_snapshots, site_vehicles
from markets.models import DepotSite
from markets.peak.selectors import plan_in_force, site_meter_map
from vpp.dispatch.values import Route
from vpp.peak.shaver import SiteState

MARGIN_FRACTION = 0.02  # act 2 % under the cap (at least MARGIN_MIN_W): meters and cars lag a reading or two
MARGIN_MIN_W = 2_000


def site_state_load(*, site_id: int, now: float) -> SiteState:
    """The cap in force (the newest plan covering now, with its forecast and charging schedule; else the site's
    configured threshold) and the cars plugged in at the site's online stations with their routes (OCPP 2.0.1
    stations: no discharge, as in regulation)."""
    at = datetime.fromtimestamp(now, UTC)
    site = DepotSite.objects.get(pk=site_id)
    plan = plan_in_force(site_id=site_id, at=at)
    threshold = plan.threshold_w if plan is not None else int(site.threshold_w)
    site_stations = set(site.stations.values_list("station_id", flat=True))
    vehicles = site_vehicles(organisation_id=site.organisation_id)
    snapshots = [s for s in plugged_in_snapshots(at=at, vehicles=vehicles) if s.station_id in site_stations]
    online = dict(
        Station.objects.filter(station_id__in={s.station_id for s in snapshots})
        .exclude(channel_name="")
        .values_list("station_id", "ocpp_version")
    )
    transactions: dict[tuple[str, int | None], str] = {}
    for station_id, evse_id, tx_id in (
        Transaction.objects.filter(station__station_id__in=online.keys(), active=True)
        .order_by("started_at")
        .values_list("station__station_id", "evse_id", "transaction_id")
    ):
        transactions[(station_id, evse_id)] = tx_id
    usable, routes = [], []
    for snap in snapshots:
        sid = snap.station_id or ""
        if sid not in online:
            continue
        version = online[sid] or "2.0.1"
        evse_id = snap.evse_id or 1
        usable.append(snap if version == "2.1" else replace(snap, max_discharge_w=0))
        routes.append(Route(sid, evse_id, version, transactions.get((sid, evse_id), "")))
    return SiteState(
        site_id=site_id,
        threshold_w=threshold,
        margin_w=max(MARGIN_MIN_W, round(threshold * MARGIN_FRACTION)),
        fleet=FleetArrays.from_snapshots(usable),
        routes=routes,
        loaded_at=now,
        plan_id=plan.pk if plan is not None else None,
        plan_start=plan.start.timestamp() if plan is not None else 0.0,
        step_s=float(plan.step_s) if plan is not None else 900.0,
        load_w=list(plan.load_w) if plan is not None else [],
        billed=[bool(b) for b in plan.billed] if plan is not None else [],
        fleet_w=list(plan.fleet_w) if plan is not None else [],
    )


def site_meters() -> dict[tuple[str, int], int]:
    """(station id, EVSE id) of every active OCPP / Modbus site meter -> its site id."""
    return {key: site_id for key, (site_id, _, _) in site_meter_map().items()}
