"""Reads for the fleet app: scoped querysets, current beliefs, resolved departures and VPP snapshots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import OuterRef, Q, QuerySet, Subquery

from chargers.models import Station
from fleet.models import (
    ApiKey,
    DeparturePlan,
    Fleet,
    FleetAlert,
    Membership,
    Organisation,
    PackTemperature,
    PlanSource,
    PlugSession,
    Role,
    SocEstimate,
    SocSource,
    StationOwnership,
    Vehicle,
    WeeklyDeparture,
)
from fleet.numerics.degradation import marginal_cost_per_kwh
from fleet.numerics.snapshot import VehicleSnapshot

# Beliefs that start an estimate chain: values observed or entered, not derived from metering.
CHAIN_SOURCES = (SocSource.REPORTED, SocSource.FLEET_MANAGER, SocSource.SEED)


def is_operator(user: AbstractBaseUser | AnonymousUser) -> bool:
    """The aggregator's own staff: every organisation, station provisioning, grid-protection settings, the admin."""
    return bool(user.is_authenticated and user.is_active and getattr(user, "is_staff", False))


def key_allows(auth: object, scope: str) -> bool:
    """Whether a request's credentials allow ``scope``: a signed-in session may do what the user's role allows; an
    API key only what its scopes list as well (``request.auth`` is the ``ApiKey`` for key-authenticated requests)."""
    return not isinstance(auth, ApiKey) or (auth.allows(scope) and not auth.has_expired and not auth.revoked)


def organisations_for(
    user: AbstractBaseUser | AnonymousUser, *, roles: Iterable[str] | None = None
) -> QuerySet[Organisation]:
    """The organisations a user acts in: all of them for an operator, else those where the user holds one of
    ``roles`` (any role when None)."""
    if not (user.is_authenticated and user.is_active):
        return Organisation.objects.none()
    if is_operator(user):
        return Organisation.objects.all()
    memberships = Membership.objects.filter(user_id=user.pk)
    if roles is not None:
        memberships = memberships.filter(role__in=list(roles))
    return Organisation.objects.filter(pk__in=memberships.values("organisation_id"))


def key_portfolios_of(*, organisation_id: int | None, portfolio: str) -> set[str] | None:
    """The portfolios an API key limited to ``organisation_id`` and/or ``portfolio`` may touch; None: not limited.
    A key of an organisation reaches that organisation's ``fleet-<id>`` portfolios only (never a whole-aggregator
    one); a key naming a portfolio that one only (and only if it is its organisation's, when it has one)."""
    allowed: set[str] | None = None
    if organisation_id is not None:
        fleet_ids = Fleet.objects.filter(organisation_id=organisation_id).values_list("pk", flat=True)
        allowed = {fleet_portfolio(pk) for pk in fleet_ids}
    if portfolio:
        allowed = {portfolio} if allowed is None else allowed & {portfolio}
    return allowed


def key_portfolios(auth: object) -> set[str] | None:
    """:func:`key_portfolios_of` for a request's credentials; None for a session (not limited by a key)."""
    if not isinstance(auth, ApiKey):
        return None
    return key_portfolios_of(organisation_id=auth.organisation_id, portfolio=auth.portfolio)


def key_narrowed(rows: QuerySet[Any], auth: object, field: str = "portfolio") -> QuerySet[Any]:
    """``rows`` of the portfolios an API key is limited to (``field`` holds a row's portfolio); all for a session."""
    allowed = key_portfolios(auth)
    return rows if allowed is None else rows.filter(**{f"{field}__in": allowed})


def portfolios_meet(first: set[str] | None, second: set[str] | None) -> set[str] | None:
    """Both limits at once (None: no limit)."""
    if first is None:
        return second
    return first if second is None else first & second


def portfolio_refusal(portfolio: str, allowed: set[str] | None) -> str | None:
    """Why ``portfolio`` is outside ``allowed`` (None: no limit), naming what is allowed; None when it is inside."""
    if allowed is None or portfolio in allowed:
        return None
    named = ", ".join(sorted(allowed)[:10]) + (", ..." if len(allowed) > 10 else "")
    return f"portfolio {portfolio!r} is not one this caller may dispatch (allowed: {named or 'none'})"


def signal_portfolios_for(user: AbstractBaseUser | AnonymousUser) -> set[str] | None:
    """The portfolios a user may send regulation signal values and reserve events for: every one (None) for an
    operator and for holders of ``markets.submit_regulation_signal`` (a service account the aggregator trusts, as the
    "bidding admin" group is its own bidding desk); else, for a utility, its organisations' ``fleet-<id>``
    portfolios (a whole-aggregator portfolio such as ``default`` moves every tenant's cars); else none."""
    if not (user.is_authenticated and user.is_active):
        return set()
    if is_operator(user) or getattr(user, "has_perm", lambda _: False)("markets.submit_regulation_signal"):
        return None
    return portfolios_for(user, roles=[Role.UTILITY])


def may_send_signals(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether a user may send signal values at all (for which portfolios: :func:`signal_portfolios_for`)."""
    portfolios = signal_portfolios_for(user)
    return portfolios is None or bool(portfolios)


def stations_for(user: AbstractBaseUser | AnonymousUser, *, roles: Iterable[str] | None = None) -> QuerySet[Station]:
    """The charging stations a user may see and command: all for an operator, else their organisations' own."""
    if is_operator(user):
        return Station.objects.all()
    return Station.objects.filter(ownership__organisation__in=organisations_for(user, roles=roles))


def fleets_for(user: AbstractBaseUser | AnonymousUser, *, roles: Iterable[str] | None = None) -> QuerySet[Fleet]:
    return Fleet.objects.filter(organisation__in=organisations_for(user, roles=roles)).select_related("organisation")


def vehicles_for(user: AbstractBaseUser | AnonymousUser, *, roles: Iterable[str] | None = None) -> QuerySet[Vehicle]:
    return Vehicle.objects.filter(fleet__in=fleets_for(user, roles=roles)).select_related(
        "fleet", "fleet__organisation"
    )


FLEET_PORTFOLIO_PREFIX = "fleet-"


def fleet_portfolio(fleet_id: int) -> str:
    """The portfolio name of one fleet's vehicles (as dispatch and the markets name it)."""
    return f"{FLEET_PORTFOLIO_PREFIX}{fleet_id}"


def portfolio_fleet_id(portfolio: str) -> int | None:
    """The fleet a ``fleet-<id>`` portfolio is made of; None for a whole-aggregator portfolio (``default``, ``all``)."""
    prefix, _, number = portfolio.partition("-")
    return int(number) if prefix == "fleet" and number.isdigit() else None


def portfolios_for(user: AbstractBaseUser | AnonymousUser, *, roles: Iterable[str] | None = None) -> set[str] | None:
    """The portfolios a user acts on: None (every portfolio) for an operator, else ``fleet-<id>`` for each fleet of
    the organisations where the user holds one of ``roles``. Whole-aggregator portfolios (``default``, ``all``: any
    name not of the form ``fleet-<id>``) are operators' only."""
    if is_operator(user):
        return None
    return {fleet_portfolio(pk) for pk in fleets_for(user, roles=roles).values_list("pk", flat=True)}


def fleets_for_key(auth: object, fleets: QuerySet[Fleet]) -> QuerySet[Fleet]:
    """``fleets`` narrowed to what an API key is limited to: its organisation, and its portfolio when it names one
    (a utility's contract). A key naming a whole-aggregator portfolio (``default``) keeps every fleet given (only an
    operator's are all of them). Session and token requests (``auth`` not an ``ApiKey``) are not narrowed."""
    if not isinstance(auth, ApiKey):
        return fleets
    if auth.organisation_id is not None:
        fleets = fleets.filter(organisation_id=auth.organisation_id)
    if auth.portfolio:
        fleet_id = portfolio_fleet_id(auth.portfolio)
        if fleet_id is not None:
            fleets = fleets.filter(pk=fleet_id)
    return fleets


def latest_soc(vehicle_id: int, *, at: datetime | None = None) -> SocEstimate | None:
    """The newest belief about the vehicle's stored energy (valid at or before ``at`` when given)."""
    qs = SocEstimate.objects.filter(vehicle_id=vehicle_id)
    if at is not None:
        qs = qs.filter(valid_at__lte=at)
    return qs.order_by("-valid_at", "-known_at", "-id").first()


def latest_chain_start(vehicle_id: int, *, at: datetime) -> SocEstimate | None:
    """The newest non-derived belief (a report, a manager's entry or the seed) valid at or before ``at``."""
    return (
        SocEstimate.objects.filter(vehicle_id=vehicle_id, source__in=CHAIN_SOURCES, valid_at__lte=at)
        .order_by("-valid_at", "-known_at", "-id")
        .first()
    )


def pack_temperatures(vehicle_id: int, *, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """(valid_at, degC) of a vehicle's pack temperatures over ``[start, end]``, the one in force at ``start``
    first (when there is one), oldest first."""
    rows = PackTemperature.objects.filter(vehicle_id=vehicle_id)
    first = rows.filter(valid_at__lte=start).order_by("-valid_at", "-id").values_list("valid_at", "temperature_c")[:1]
    inside = rows.filter(valid_at__gt=start, valid_at__lte=end).order_by("valid_at", "id")
    return list(first) + list(inside.values_list("valid_at", "temperature_c"))


def open_session(vehicle_id: int) -> PlugSession | None:
    return PlugSession.objects.filter(vehicle_id=vehicle_id, ended_at__isnull=True).first()


@dataclass(frozen=True, slots=True)
class ResolvedDeparture:
    departure_at: datetime
    target_soc_pct: int
    source: str


def next_weekly_departure(rows: Iterable[WeeklyDeparture], *, tz_name: str, at: datetime) -> ResolvedDeparture | None:
    """The first occurrence at or after ``at`` of any weekly row (times are wall-clock in ``tz_name``)."""
    tz = ZoneInfo(tz_name)
    local = at.astimezone(tz)
    best: ResolvedDeparture | None = None
    for row in rows:
        days_ahead = (row.weekday - local.weekday()) % 7
        for extra in (0, 7):
            day = local.date() + timedelta(days=days_ahead + extra)
            when = datetime.combine(day, row.departure_time, tzinfo=tz)
            if when >= local:
                break
        candidate = ResolvedDeparture(when.astimezone(ZoneInfo("UTC")), row.target_soc_pct, PlanSource.SCHEDULE)
        if best is None or candidate.departure_at < best.departure_at:
            best = candidate
    return best


def resolve_departure(
    *,
    plans: Iterable[DeparturePlan],
    weekly: Iterable[WeeklyDeparture],
    tz_name: str,
    at: datetime,
    plugged_since: datetime | None,
) -> ResolvedDeparture | None:
    """Newest explicit plan (station or fleet manager) made for the current plug-in, else the weekly schedule.

    A plan counts for the current plug-in if it was learned after the car plugged in or its departure is still
    ahead; a plan whose departure has passed while the car is still plugged in stays in force (the car is overdue:
    it must reach its target before anything else).
    """
    since = plugged_since or at
    current = [p for p in plans if p.known_at >= since or p.departure_at >= at]
    if current:
        plan = max(current, key=lambda p: (p.known_at, p.id))
        return ResolvedDeparture(plan.departure_at, plan.target_soc_pct, plan.source)
    return next_weekly_departure(weekly, tz_name=tz_name, at=at)


def power_limits(vehicle: Vehicle, session: PlugSession | None) -> tuple[int, int]:
    """(charge W, discharge W): the lowest of the vehicle's AC or DC rating and what the EV and EVSE reported."""
    dc = bool(session and session.dc)
    charge = vehicle.dc_max_charge_w if dc else vehicle.ac_max_charge_w
    discharge = vehicle.dc_max_discharge_w if dc else vehicle.ac_max_discharge_w
    if session is not None:
        for limit in (session.ev_max_charge_w, session.evse_max_charge_w):
            if limit is not None:
                charge = min(charge, limit)
        for limit in (session.ev_max_discharge_w, session.evse_max_discharge_w):
            if limit is not None:
                discharge = min(discharge, limit)
    return charge, discharge


def site_vehicles(*, organisation_id: int | None) -> QuerySet[Vehicle] | None:
    """The vehicles a depot site of ``organisation_id`` may command: that organisation's own, never another's that
    happens to be plugged in at its stations; None (no restriction) for a site no organisation owns yet, which only
    operators configure."""
    if organisation_id is None:
        return None
    return Vehicle.objects.filter(fleet__organisation_id=organisation_id)


def plugged_in_snapshots(
    *, at: datetime, vehicles: QuerySet[Vehicle] | None = None, fleet_id: int | None = None
) -> list[VehicleSnapshot]:
    """A :class:`VehicleSnapshot` for every plugged-in vehicle with a known SoC, in four queries whatever the size.

    SoC is the newest belief (valid at or before ``at``); departure and target come from :func:`resolve_departure`.
    Restrict with ``vehicles`` (e.g. :func:`vehicles_for` a user) or ``fleet_id``.
    """
    sessions = PlugSession.objects.filter(ended_at__isnull=True).select_related("vehicle", "vehicle__fleet")
    if vehicles is not None:
        sessions = sessions.filter(vehicle__in=vehicles)
    if fleet_id is not None:
        sessions = sessions.filter(vehicle__fleet_id=fleet_id)
    newest = SocEstimate.objects.filter(vehicle_id=OuterRef("vehicle_id"), valid_at__lte=at).order_by(
        "-valid_at", "-known_at", "-id"
    )
    rows = list(sessions.annotate(soc_wh=Subquery(newest.values("soc_wh")[:1])).order_by("vehicle_id"))
    ids = [s.vehicle_id for s in rows]
    plans: dict[int, list[DeparturePlan]] = defaultdict(list)
    for plan in DeparturePlan.objects.filter(vehicle_id__in=ids).exclude(source=PlanSource.SCHEDULE):
        plans[plan.vehicle_id].append(plan)
    weekly: dict[int, list[WeeklyDeparture]] = defaultdict(list)
    for row in WeeklyDeparture.objects.filter(vehicle_id__in=ids):
        weekly[row.vehicle_id].append(row)
    return [
        snapshot_of(s.vehicle, s, soc_wh=s.soc_wh, plans=plans[s.vehicle_id], weekly=weekly[s.vehicle_id], at=at)
        for s in rows
        if s.soc_wh is not None
    ]


def snapshot_of(
    vehicle: Vehicle,
    session: PlugSession | None,
    *,
    soc_wh: int,
    plans: Iterable[DeparturePlan],
    weekly: Iterable[WeeklyDeparture],
    at: datetime,
) -> VehicleSnapshot:
    charge_w, discharge_w = power_limits(vehicle, session)
    departure = resolve_departure(
        plans=plans,
        weekly=weekly,
        tz_name=vehicle.fleet.timezone,
        at=at,
        plugged_since=session.started_at if session else None,
    )
    capacity = vehicle.usable_capacity_wh
    params = vehicle.degradation_params()
    return VehicleSnapshot(
        vehicle_id=vehicle.id,
        capacity_wh=capacity,
        soc_wh=min(max(int(soc_wh), 0), capacity),
        floor_wh=vehicle.floor_wh,
        max_charge_w=charge_w,
        max_discharge_w=discharge_w,
        charge_efficiency=vehicle.charge_efficiency,
        discharge_efficiency=vehicle.discharge_efficiency,
        departure=departure.departure_at if departure else None,
        target_wh=capacity * departure.target_soc_pct // 100 if departure else 0,
        state_of_health=vehicle.state_of_health,
        temperature_c=vehicle.pack_temperature_c,
        cycles_today=vehicle.cycles_today if vehicle.cycles_date == at.date() else 0.0,
        node=vehicle.effective_node,
        station_id=session.station_id if session else None,
        evse_id=session.evse_id if session else None,
        degradation_cost_per_kwh=float(
            marginal_cost_per_kwh(
                capacity_wh=capacity,
                params=params,
                soc=min(max(int(soc_wh), 0), capacity) / capacity,
                temperature_c=vehicle.pack_temperature_c,
            )
        ),
        degradation=params,
    )


def vehicle_snapshot(vehicle: Vehicle, *, at: datetime) -> VehicleSnapshot | None:
    """The snapshot of one vehicle (plugged in or not), or None while its SoC is unknown."""
    belief = latest_soc(vehicle.id, at=at)
    if belief is None:
        return None
    return snapshot_of(
        vehicle,
        open_session(vehicle.id),
        soc_wh=belief.soc_wh,
        plans=list(vehicle.departure_plans.exclude(source=PlanSource.SCHEDULE)),
        weekly=list(vehicle.weekly_departures.all()),
        at=at,
    )


def api_keys_of(user: AbstractBaseUser | AnonymousUser) -> QuerySet[ApiKey]:
    """A user's own API keys, newest first (the account page lists and revokes only these, operators included)."""
    if not user.is_authenticated:
        return ApiKey.objects.none()
    return ApiKey.objects.filter(user_id=user.pk).select_related("organisation").order_by("-created")


def station_owner_name(station_pk: int) -> str:
    """The name of the organisation owning a station ("" when none): the O of the certificates the CSMS issues it
    (registered with ``chargers.services.certificates`` at start)."""
    name = StationOwnership.objects.filter(station_id=station_pk).values_list("organisation__name", flat=True).first()
    return name or ""


def alerts_for(
    user: AbstractBaseUser | AnonymousUser, *, open_only: bool = False, since: datetime | None = None
) -> QuerySet[FleetAlert]:
    """Alerts of the organisations a user acts in (operators: all), newest first; ``open_only``: not cleared yet;
    ``since``: also those cleared after it."""
    rows = FleetAlert.objects.filter(organisation__in=organisations_for(user)).select_related("vehicle")
    if open_only:
        return rows.filter(cleared_at__isnull=True)
    if since is not None:
        rows = rows.filter(Q(cleared_at__isnull=True) | Q(cleared_at__gte=since))
    return rows
