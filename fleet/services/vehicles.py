"""Vehicles' write path: matching sessions, plug sessions, departure plans, SoC beliefs and the derived state
refresh. Keyword-only, typed, one transaction each where they write."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from fleet import jobs, selectors
from fleet.models import (
    DeparturePlan,
    PackTemperature,
    PlanSource,
    PlugSession,
    SocEstimate,
    SocSource,
    TemperatureSource,
    Vehicle,
    VehicleState,
    WeeklyDeparture,
)
from fleet.numerics.degradation import equivalent_full_cycles
from fleet.numerics.flexibility import vehicle_flexibility
from fleet.services.errors import FleetError

FLEX_INTERVALS = 96
FLEX_INTERVAL_S = 900
REFRESH_DEBOUNCE_S = 2  # telemetry arriving within this window shares one refresh
REFRESH_STALE_S = 60  # a refresh pending longer than this is assumed lost and enqueued again
# Pack temperature: an unchanged value is stored again only after this long (a pack's thermal time constant is
# minutes; settlement needs the series, not a row per second).
TEMPERATURE_KEEP_S = 60
# What a pack temperature sensor can truthfully say (beyond the -40..85 degC range automotive cells are specified
# for, with margin): a value outside is a broken sensor or a unit error, refused rather than derated on.
TEMPERATURE_PLAUSIBLE_C = (-50.0, 120.0)


# --- Matching vehicles to sessions ----------------------------------------------------------------------------------


def vehicle_match(*, id_token: str = "", evccid: str = "", vin: str = "") -> tuple[Vehicle, str] | None:
    """The vehicle a session belongs to and what matched it: EVCCID first (ISO 15118), then VIN, then id token."""
    for field, value in (("evccid", evccid), ("vin", vin), ("id_token", id_token)):
        if value:
            vehicle = Vehicle.objects.select_related("fleet").filter(**{field: value}).first()
            if vehicle is not None:
                return vehicle, field
    return None


@transaction.atomic
def session_open(
    *,
    vehicle: Vehicle,
    station_id: str,
    evse_id: int | None,
    transaction_id: str,
    matched_by: str,
    started_at: datetime,
    dc: bool = False,
) -> PlugSession:
    """Open (or return the already open) plug-in session; an older open session of the vehicle is closed first."""
    existing = PlugSession.objects.select_for_update().filter(vehicle=vehicle, ended_at__isnull=True).first()
    if existing is not None:
        if existing.station_id == station_id and existing.transaction_id == transaction_id:
            return existing
        existing.ended_at = started_at
        existing.save(update_fields=["ended_at"])
    session = PlugSession.objects.create(
        vehicle=vehicle,
        station_id=station_id,
        evse_id=evse_id,
        transaction_id=transaction_id,
        matched_by=matched_by,
        started_at=started_at,
        dc=dc,
    )
    vehicle_request_refresh(vehicle_id=vehicle.id)
    return session


def session_close(*, station_id: str, transaction_id: str, ended_at: datetime) -> int:
    """Close the open session of a transaction; returns how many were closed (0 or 1). Idempotent."""
    sessions = list(
        PlugSession.objects.filter(station_id=station_id, transaction_id=transaction_id, ended_at__isnull=True)
    )
    closed = PlugSession.objects.filter(id__in=[s.id for s in sessions], ended_at__isnull=True).update(
        ended_at=ended_at
    )
    for s in sessions:
        vehicle_request_refresh(vehicle_id=s.vehicle_id)
    return closed


def session_set_limits(
    *,
    session: PlugSession,
    ev_max_charge_w: int | None = None,
    ev_max_discharge_w: int | None = None,
    evse_max_charge_w: int | None = None,
    evse_max_discharge_w: int | None = None,
) -> PlugSession:
    """Record power limits the EV (ISO 15118 V2X parameters) or the EVSE reported for this session."""
    changed = []
    for name, value in (
        ("ev_max_charge_w", ev_max_charge_w),
        ("ev_max_discharge_w", ev_max_discharge_w),
        ("evse_max_charge_w", evse_max_charge_w),
        ("evse_max_discharge_w", evse_max_discharge_w),
    ):
        if value is not None:
            setattr(session, name, max(int(value), 0))
            changed.append(name)
    if changed:
        session.save(update_fields=changed)
        vehicle_request_refresh(vehicle_id=session.vehicle_id)
    return session


# --- Departure plans ------------------------------------------------------------------------------------------------


def departure_plan_set(
    *,
    vehicle: Vehicle,
    departure_at: datetime,
    target_soc_pct: int,
    source: PlanSource | str,
    known_at: datetime | None = None,
    session: PlugSession | None = None,
) -> DeparturePlan:
    if timezone.is_naive(departure_at):
        raise FleetError("departure_at must carry a time zone")
    if not 0 <= target_soc_pct <= 100:
        raise FleetError("target_soc_pct must be within 0..100")
    if source not in PlanSource.values:
        raise FleetError(f"unknown plan source {source!r}")
    plan = DeparturePlan.objects.create(
        vehicle=vehicle,
        source=source,
        departure_at=departure_at,
        target_soc_pct=target_soc_pct,
        known_at=known_at or timezone.now(),
        session=session,
    )
    vehicle_request_refresh(vehicle_id=vehicle.id)
    return plan


@transaction.atomic
def weekly_schedule_set(*, vehicle: Vehicle, rows: list[tuple[int, time, int]]) -> list[WeeklyDeparture]:
    """Replace the vehicle's weekly departures with ``rows`` of (weekday 0=Monday, local time, target SoC %)."""
    days = [day for day, _, _ in rows]
    if len(set(days)) != len(days):
        raise FleetError("one departure per weekday")
    for day, _, pct in rows:
        if not 0 <= day <= 6 or not 0 <= pct <= 100:
            raise FleetError("weekday must be 0..6 and target_soc_pct 0..100")
    WeeklyDeparture.objects.filter(vehicle=vehicle).delete()
    created = WeeklyDeparture.objects.bulk_create(
        WeeklyDeparture(vehicle=vehicle, weekday=day, departure_time=at, target_soc_pct=pct) for day, at, pct in rows
    )
    vehicle_request_refresh(vehicle_id=vehicle.id)
    return created


# --- State of charge beliefs ----------------------------------------------------------------------------------------


def soc_report(
    *,
    vehicle: Vehicle,
    soc_wh: int,
    valid_at: datetime,
    source: SocSource | str = SocSource.REPORTED,
    import_register_wh: int | None = None,
    export_register_wh: int | None = None,
    known_at: datetime | None = None,
) -> SocEstimate:
    """Record an observed SoC (a report, a fleet manager's entry or the seed): it resets the estimate chain."""
    if source == SocSource.METERED:
        raise FleetError("metered estimates are derived with soc_advance, not reported")
    if not 0 <= soc_wh <= vehicle.usable_capacity_wh:
        raise FleetError(f"soc_wh {soc_wh} is outside 0..{vehicle.usable_capacity_wh}")
    belief = SocEstimate.objects.create(
        vehicle=vehicle,
        soc_wh=soc_wh,
        source=source,
        valid_at=valid_at,
        known_at=known_at or timezone.now(),
        import_register_wh=import_register_wh,
        export_register_wh=export_register_wh,
    )
    vehicle_request_refresh(vehicle_id=vehicle.id, telemetry=True)
    return belief


def advanced_soc_wh(*, basis: SocEstimate, vehicle: Vehicle, import_register_wh: int, export_register_wh: int) -> int:
    """Basis SoC plus metered energy: imported Wh times eta_c in, exported Wh divided by eta_d out (clipped)."""
    imported = import_register_wh - (basis.import_register_wh or 0)
    exported = export_register_wh - (basis.export_register_wh or 0)
    soc = basis.soc_wh + imported * vehicle.charge_efficiency - exported / vehicle.discharge_efficiency
    return round(min(max(soc, 0.0), float(vehicle.usable_capacity_wh)))


def soc_advance(
    *,
    vehicle: Vehicle,
    import_register_wh: int,
    export_register_wh: int,
    valid_at: datetime,
    known_at: datetime | None = None,
) -> SocEstimate | None:
    """Advance the newest observed SoC by the meter registers read at ``valid_at``; None when it cannot.

    It cannot when no observation with register readings precedes ``valid_at``, or when the registers went
    backwards (another meter, a reset): then the estimate waits for the next report instead of guessing.
    Idempotent: the same reading yields the existing estimate.
    """
    basis = selectors.latest_chain_start(vehicle.id, at=valid_at)
    if basis is None or basis.import_register_wh is None or valid_at <= basis.valid_at:
        return None  # nothing to advance from, or the reading is the observation itself
    if import_register_wh < basis.import_register_wh or export_register_wh < (basis.export_register_wh or 0):
        return None
    existing = SocEstimate.objects.filter(
        vehicle=vehicle, source=SocSource.METERED, basis=basis, valid_at=valid_at
    ).first()
    if existing is not None:
        return existing
    belief = SocEstimate.objects.create(
        vehicle=vehicle,
        soc_wh=advanced_soc_wh(
            basis=basis, vehicle=vehicle, import_register_wh=import_register_wh, export_register_wh=export_register_wh
        ),
        source=SocSource.METERED,
        valid_at=valid_at,
        known_at=known_at or timezone.now(),
        import_register_wh=import_register_wh,
        export_register_wh=export_register_wh,
        basis=basis,
    )
    vehicle_request_refresh(vehicle_id=vehicle.id, telemetry=True)
    return belief


# --- Pack temperature -----------------------------------------------------------------------------------------------


def pack_temperature_report(
    *,
    vehicle: Vehicle,
    temperature_c: float,
    valid_at: datetime,
    source: TemperatureSource | str = TemperatureSource.REPORTED,
    known_at: datetime | None = None,
) -> PackTemperature | None:
    """Record a pack temperature; the newest becomes the vehicle's (allocation, derating, bids). Idempotent.

    Stored when the value changed since the reading before it, or that one is :data:`TEMPERATURE_KEEP_S` old;
    returns the row stored, or None when the reading added nothing (a repeat). An implausible value is refused
    (:class:`FleetError`): derating on a broken sensor's 400 degC, or its -273, would be worse than the last good value.
    """
    low, high = TEMPERATURE_PLAUSIBLE_C
    if not low <= temperature_c <= high:
        raise FleetError(f"pack temperature {temperature_c} degC is outside {low:.0f}..{high:.0f} degC")
    if source not in TemperatureSource.values:
        raise FleetError(f"unknown temperature source {source!r}")
    before = (
        PackTemperature.objects.filter(vehicle=vehicle, valid_at__lte=valid_at).order_by("-valid_at", "-id").first()
    )
    if before is not None and (
        before.valid_at == valid_at
        or (before.temperature_c == temperature_c and (valid_at - before.valid_at).total_seconds() < TEMPERATURE_KEEP_S)
    ):
        return None
    row = PackTemperature.objects.create(
        vehicle=vehicle,
        temperature_c=temperature_c,
        source=source,
        valid_at=valid_at,
        known_at=known_at or timezone.now(),
    )
    newer = Vehicle.objects.filter(id=vehicle.id).filter(
        Q(pack_temperature_at__isnull=True) | Q(pack_temperature_at__lt=valid_at)
    )
    if newer.update(pack_temperature_c=temperature_c, pack_temperature_at=valid_at):
        vehicle.pack_temperature_c, vehicle.pack_temperature_at = temperature_c, valid_at
        if before is None or before.temperature_c != temperature_c:
            vehicle_request_refresh(vehicle_id=vehicle.id, telemetry=True)
    return row


# --- Derived state refresh ------------------------------------------------------------------------------------------


def vehicle_request_refresh(*, vehicle_id: int, telemetry: bool = False) -> None:
    """Mark the vehicle's derived state stale; enqueue a refresh after commit unless one is already pending.

    Only the clean -> dirty transition enqueues, so a burst of telemetry costs one recomputation. A telemetry change
    (SoC, pack temperature: ``telemetry=True``) is refreshed ``FLEET_TELEMETRY_REFRESH_S`` later: the derived state
    (``VehicleState``: the SoC shown, the flexibility envelope) is read by pages and the API, dispatch reads the SoC
    beliefs themselves, and with cars reporting every second a refresh every 2 s per car was most of a worker's
    time. Any other change (plug-in, unplug, limits, departure plans) is refreshed ``REFRESH_DEBOUNCE_S`` later,
    even while a slower telemetry refresh is pending (the claim lets one of the two do the work). A request left
    pending longer than ``REFRESH_STALE_S`` (a lost message) is enqueued again.
    """
    now = timezone.now()
    # A request is taken for lost only well after its refresh was due (a long FLEET_TELEMETRY_REFRESH_S included).
    stale = now - timedelta(seconds=max(REFRESH_STALE_S, 2 * settings.FLEET_TELEMETRY_REFRESH_S))
    rows = VehicleState.objects.filter(vehicle_id=vehicle_id)
    if not rows.filter(Q(dirty=False) | Q(requested_at__lt=stale) | Q(requested_at__isnull=True)).update(
        dirty=True, requested_at=now
    ):
        if rows.exists():
            if not telemetry:  # the pending refresh may be a telemetry one, up to a minute away: one soon too
                jobs.task_enqueue_on_commit(
                    name=jobs.REFRESH_VEHICLE_STATE, args=(vehicle_id,), countdown=REFRESH_DEBOUNCE_S
                )
            return  # else a refresh is already pending and will read this transaction's data
        try:
            with transaction.atomic():
                VehicleState.objects.create(vehicle_id=vehicle_id, dirty=True, requested_at=now)
        except IntegrityError:  # created concurrently: that request enqueues
            return
    countdown = settings.FLEET_TELEMETRY_REFRESH_S if telemetry else REFRESH_DEBOUNCE_S
    jobs.task_enqueue_on_commit(name=jobs.REFRESH_VEHICLE_STATE, args=(vehicle_id,), countdown=countdown)


def vehicle_state_claim(*, vehicle_id: int) -> bool:
    """Claim a pending refresh: True for exactly one caller per request (atomic update, rowcount check)."""
    return bool(VehicleState.objects.filter(vehicle_id=vehicle_id, dirty=True).update(dirty=False))


def vehicle_state_refresh(*, vehicle_id: int, now: datetime | None = None) -> VehicleState | None:
    """Recompute cycles today, the current SoC belief, departure and the flexibility envelope of one vehicle."""
    now = now or timezone.now()
    vehicle = Vehicle.objects.select_related("fleet").filter(id=vehicle_id).first()
    if vehicle is None:
        return None
    _update_cycles_today(vehicle, now=now)
    session = selectors.open_session(vehicle.id)
    belief = selectors.latest_soc(vehicle.id, at=now)
    snapshot = selectors.vehicle_snapshot(vehicle, at=now)
    state, _ = VehicleState.objects.get_or_create(vehicle=vehicle, defaults={"dirty": False})
    state.refreshed_at = now
    state.plugged_in = session is not None
    state.soc_wh = belief.soc_wh if belief else None
    state.soc_source = belief.source if belief else ""
    state.soc_valid_at = belief.valid_at if belief else None
    state.departure_at = snapshot.departure if snapshot else None
    state.target_wh = snapshot.target_wh if snapshot and snapshot.departure else None
    if snapshot is not None and session is not None:
        envelope = vehicle_flexibility(snapshot, start=now, intervals=FLEX_INTERVALS, interval_s=FLEX_INTERVAL_S)
        state.up_w, state.down_w = int(envelope.up_w[0]), int(envelope.down_w[0])
        state.baseline_w = int(envelope.baseline_w[0])
        state.flexibility = envelope.as_dict()
    else:
        state.up_w = state.down_w = state.baseline_w = 0
        state.flexibility = {}
    state.save(
        update_fields=[
            "refreshed_at",
            "plugged_in",
            "soc_wh",
            "soc_source",
            "soc_valid_at",
            "departure_at",
            "target_wh",
            "up_w",
            "down_w",
            "baseline_w",
            "flexibility",
        ]
    )
    return state


def _update_cycles_today(vehicle: Vehicle, *, now: datetime) -> None:
    """Equivalent full cycles of today's SoC beliefs (rainflow); the lifetime count grows by today's increase."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    socs = list(
        SocEstimate.objects.filter(vehicle=vehicle, valid_at__gte=day_start, valid_at__lte=now)
        .order_by("valid_at", "known_at", "id")
        .values_list("soc_wh", flat=True)
    )
    today = equivalent_full_cycles([s / vehicle.usable_capacity_wh for s in socs]) if len(socs) > 1 else 0.0
    previous = vehicle.cycles_today if vehicle.cycles_date == now.date() else 0.0
    increase = max(today - previous, 0.0)
    Vehicle.objects.filter(id=vehicle.id).update(
        cycles_today=today, cycles_date=now.date(), equivalent_full_cycles=F("equivalent_full_cycles") + increase
    )
    vehicle.cycles_today, vehicle.cycles_date = today, now.date()
    vehicle.equivalent_full_cycles += increase
