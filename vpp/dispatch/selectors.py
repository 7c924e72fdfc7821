"""Reads for regulation dispatch: the state a :class:`vpp.dispatch.dispatcher.Dispatcher` keeps in memory.

(Kept apart from ``vpp.dashboard.selectors``, which serves the dashboard.)

Called on the dispatcher's background thread, never per signal.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
from django.db.models import Min, Sum

from chargers.models import Station, Transaction
from fleet.numerics.arrays import FleetArrays, power_bounds
from fleet.selectors import plugged_in_snapshots
from markets.models import Award, Product
from markets.regulation.selectors import POWER_MAX_AGE_S, charge_point_power, reserve_in_force
from vpp.dispatch.dispatcher import DispatchState, Route
from vpp.dispatch.values import Cap, reserve_room
from vpp.models import Dispatch, PowerCap

CAPS_AHEAD = timedelta(days=1)


def dispatch_state_load(*, product_id: int, portfolio: str, now: float, hold_s: float = 60.0) -> DispatchState:
    """Plugged-in vehicles on connected stations, their routes, and the capacity awarded at ``now``.

    The portfolio names the vehicles: ``fleet-<id>`` one fleet's, anything else (``default``) all of them.
    A vehicle is dispatchable when its plug session names a station that is online (has a socket); OCPP 2.0.1
    stations cannot discharge, so their vehicles get no discharge power. The transaction is the station's active
    one on the session's EVSE (TxProfiles are bound to it).
    """
    at = datetime.fromtimestamp(now, UTC)
    snapshots = [s for s in plugged_in_snapshots(at=at, fleet_id=portfolio_fleet_id(portfolio)) if s.station_id]
    stations = {
        row["station_id"]: row
        for row in Station.objects.filter(station_id__in={s.station_id for s in snapshots})
        .exclude(channel_name="")
        .values("pk", "station_id", "ocpp_version")
    }
    transactions: dict[tuple[str, int | None], str] = {}
    for station_id, evse_id, tx_id in (
        Transaction.objects.filter(station__station_id__in=stations.keys(), active=True)
        .order_by("started_at")
        .values_list("station__station_id", "evse_id", "transaction_id")
    ):
        transactions[(station_id, evse_id)] = tx_id  # the newest active one wins
    usable, routes = [], []
    for snap in snapshots:
        station = stations.get(snap.station_id or "")
        if station is None:
            continue
        version = station["ocpp_version"] or "2.0.1"
        evse_id = snap.evse_id or 1
        if version != "2.1":
            snap = replace(snap, max_discharge_w=0)
        usable.append(snap)
        routes.append(
            Route(snap.station_id or "", evse_id, version, transactions.get((snap.station_id or "", evse_id), ""))
        )
    fleet = FleetArrays.from_snapshots(usable)
    capacity, until = awarded_capacity(product_id=product_id, portfolio=portfolio, at=at)
    reserve_w, reserve_until = reserve_in_force(portfolio=portfolio, at=at)
    # While no event deploys it, the reserve awarded now stays in the cars (an event may come mid-regulation);
    # what an event in force deploys is no longer held.
    awarded_w, sustain_h = reserve_awarded(portfolio=portfolio, at=at)
    held_w = max(awarded_w - reserve_w, 0)
    fleet, _ = reserve_room(fleet, held_w=held_w, sustain_h=sustain_h, now=now)
    preferred = 0
    if len(fleet):
        # Basepoint preference: what the fleet must charge anyway to keep every departure reachable.
        bounds = power_bounds(fleet, now=now, duration_s=hold_s)
        preferred = int(np.maximum(bounds.lo, 0).sum())
    return DispatchState(
        fleet=fleet,
        routes=routes,
        capacity_w=capacity,
        award_until=until,
        loaded_at=now,
        preferred_basepoint_w=preferred,
        reserve_w=reserve_w,
        reserve_until=reserve_until.timestamp() if reserve_until is not None else None,
        reserve_held_w=held_w if len(fleet) else 0,
        caps=power_caps_of(portfolio=portfolio, at=at),
    )


def power_caps_of(*, portfolio: str, at: datetime) -> tuple[Cap, ...]:
    """The portfolio's export / import caps in force at ``at`` or starting within a day (a dispatcher's state is
    reloaded every few seconds; each dispatch applies those in force at its own instant)."""
    rows = PowerCap.objects.filter(portfolio=portfolio, end__gt=at, start__lt=at + CAPS_AHEAD).values_list(
        "start", "end", "export_w", "import_w"
    )
    return tuple(Cap(start.timestamp(), end.timestamp(), export_w, import_w) for start, end, export_w, import_w in rows)


def reserve_awarded(*, portfolio: str, at: datetime) -> tuple[int, float]:
    """The reserve awarded to ``portfolio`` at ``at`` (W, over every reserve product) and the sustain time (h) a
    full deployment of it lasts: with products of different sustain times, the one that keeps the same energy
    (sum of W x sustain h over the sum of W). ``(0, 0.0)`` when none."""
    rows = Award.objects.filter(
        product__kind=Product.Kind.RESERVE,
        portfolio=portfolio,
        interval_start__lte=at,
        interval_end__gt=at,
        awarded_w__gt=0,
    ).values_list("awarded_w", "product__sustain_minutes")
    total_w = sum(w for w, _ in rows)
    if total_w <= 0:
        return 0, 0.0
    return total_w, sum(w * minutes for w, minutes in rows) / 60.0 / total_w


def portfolio_fleet_id(portfolio: str) -> int | None:
    """Portfolio ``fleet-<id>`` regulates that fleet's vehicles; any other name (``default``) every plugged-in one."""
    prefix, _, number = portfolio.partition("-")
    return int(number) if prefix == "fleet" and number.isdigit() else None


def awarded_capacity(*, product_id: int, portfolio: str, at: datetime) -> tuple[int, float | None]:
    """The regulation capacity (W) awarded at the instant ``at``, and the epoch s until which that figure holds.

    Awards may overlap (two bids cleared for the same hour, or an hour's award inside a longer one): the capacity
    at ``at`` is the sum of ``awarded_w`` over every award of the product and portfolio whose interval contains
    ``at`` (``interval_start <= at < interval_end``). That sum holds until the EARLIEST end among those awards:
    after it the sum is smaller, so a dispatcher using it longer would regulate more than was awarded. (An award
    starting before then raises the sum only at the next reload, ``DISPATCH_REFRESH_S`` later: under- rather than
    over-regulating meanwhile.) ``(0, None)`` when nothing is awarded at ``at``.
    """
    totals = Award.objects.filter(
        product_id=product_id, portfolio=portfolio, interval_start__lte=at, interval_end__gt=at, awarded_w__gt=0
    ).aggregate(total=Sum("awarded_w"), until=Min("interval_end"))
    if not totals["total"]:
        return 0, None
    return int(totals["total"]), totals["until"].timestamp()


def portfolio_dispatchable(*, product_id: int, portfolio: str, at: datetime) -> bool:
    """Whether a signal value of the product for ``portfolio`` at ``at`` has anything to dispatch: regulation
    capacity awarded then, or a reserve event in force then (what :class:`~vpp.dispatch.dispatcher.Dispatcher`
    would otherwise skip). The intake takes values for such portfolios only."""
    capacity, _ = awarded_capacity(product_id=product_id, portfolio=portfolio, at=at)
    if capacity > 0:
        return True
    reserve_w, _ = reserve_in_force(portfolio=portfolio, at=at)
    return reserve_w > 0


def fleet_power_at(station_ids: list[str], at_s: float) -> int:
    """Metered power (W, + charging) of ``station_ids`` in force at the epoch second ``at_s``: each charge point's
    newest deduplicated reading at or before it, no older than ``POWER_MAX_AGE_S`` (else 0: unknown counts as idle).

    A reserve event's response is measured against this (PJM: output at the event start).
    """
    at = datetime.fromtimestamp(at_s, UTC)
    pks = list(Station.objects.filter(station_id__in=station_ids).values_list("pk", flat=True))
    if not pks:
        return 0
    total = 0.0
    for series in charge_point_power(start=at, end=at + timedelta(microseconds=1), stations=pks):
        before = series.times_s <= at_s
        if before.any():
            k = int(np.flatnonzero(before)[-1])
            if at_s - series.times_s[k] <= POWER_MAX_AGE_S:
                total += float(series.values[k])
    return round(total)


def regulation_dispatched_since(portfolio: str, since_s: float) -> bool:
    """Whether any server process's regulation dispatch of ``portfolio`` sent setpoints since ``since_s`` (epoch s):
    a recorded :class:`~vpp.models.Dispatch` of a regulation product with commands, signalled since then."""
    since = datetime.fromtimestamp(since_s, UTC)
    regulation = Product.objects.filter(kind=Product.Kind.REGULATION).values_list("id", flat=True)
    return Dispatch.objects.filter(
        product_id__in=list(regulation), portfolio=portfolio, signal_at__gte=since, commands__gt=0
    ).exists()
