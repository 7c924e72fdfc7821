"""A past week of regulation for the demo, generated at start-up through the real code, labelled simulated.

For each demo fleet (portfolio ``fleet-<id>``), each of the last ``days`` days and each block of regulation hours:

1. cars of the fleet that are not plugged in now get a (closed) plug session at the fleet's stations;
2. the demo market publishes its prices and the fleet's offer becomes an award through the real bidding services
   (:mod:`vpp.demo_market`; bids and awards flagged ``simulated``);
3. dispatch is simulated on the RegD test signal, looped (``markets/data/pjm-regd-test-signal-40min.csv``): every 2 s
   the fleet setpoint (``vpp.dispatch.values.fleet_setpoint_w`` around ``basepoint_choose``) is split across the cars
   by the dispatcher's allocation (``fleet.numerics.allocation.allocate``); each car follows its share with a 2-s
   lag and meter noise, its state of charge tracked (``FleetArrays.advance``); its meter reports power and energy
   registers every 10 s -- stored as ``MeterValue`` rows with ``source = "simulated"`` -- and the signal and
   basepoint are stored as dispatch stores them (``source = "simulated"``);
4. every settlement period of every awarded hour (the demo product's quarter-hours) is then scored and settled by
   ``markets.regulation.settling.settlement_compute`` (the settlement task's own code), and the scores and
   settlements are flagged ``simulated``.

Synchronized reserve: each block's hours also hold a reserve award (offered first, the regulation offer sized on
what is left, as live: :mod:`vpp.demo_market`); outside events the simulated dispatch keeps it in the cars
(``vpp.dispatch.values.reserve_room``, as the dispatcher does), and the first hour of each block has a reserve event
(:data:`EVENT_AFTER` into it, ``EVENT_MINUTES`` long, all of the award, stored through
``reserve_deployment_record`` with source ``simulated``) carried by the regulation setpoints (``basepoint - signal x
capacity - reserve``, the signal held at its value at the event start as the demo operator does). The settlement of
the reserve award measures it from the simulated meter values (``markets.reserve``) and charges any shortfall;
the measurement and settlements are flagged ``simulated``.

Idempotent: an hour that already has a bid for the portfolio is skipped, so a restart only fills the days missing.
Hours that would overlap a real plug session at a station leave that station out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
from django.db import transaction
from django.db.models import Q

from chargers.bulk import insert_rows
from chargers.models import MeterValue, Station
from fleet.models import Fleet, PlugSession, StationOwnership, Vehicle
from fleet.numerics.allocation import allocate
from fleet.numerics.arrays import FleetArrays, power_bounds
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.services.vehicles import session_close, session_open
from markets.models import Award, Product
from markets.regulation.models import PerformanceScoreRecord, RegulationSignal, Settlement
from markets.regulation.services import RegulationError, regulation_basepoint_record, reserve_deployment_record
from markets.regulation.settlement import SettlementError
from markets.regulation.settling import settlement_compute, settlement_periods
from markets.regulation.signals import read_signal_csv
from markets.reserve.models import ReserveEventPerformance
from vpp.demo_market import (
    HOUR,
    RESERVE_SUSTAIN_MINUTES,
    demo_portfolios,
    demo_product,
    demo_reserve_product,
    offer_award,
    offer_capacity_w,
    prices_publish,
    reserve_offer_w,
    reserve_price,
)
from vpp.dispatch.values import basepoint_choose, fleet_setpoint_w, reserve_room

REGD = Path(__file__).resolve().parents[1] / "markets" / "data" / "pjm-regd-test-signal-40min.csv"
SIMULATED = "simulated"
#: Regulation blocks per day (UTC start hour, hours): the morning and evening peaks.
BLOCKS = ((12, 2), (22, 2))
DAYS = 7
STEP_S = 2
METER_EVERY_S = 10
LAG_S = 2.0
TAIL = timedelta(minutes=6)  # the hourly score looks 5 min 10 s past the hour: the fleet follows the signal on
SESSION_MARGIN = timedelta(minutes=30)
EVENT_AFTER = timedelta(minutes=20)  # a block's reserve event starts this far into its first hour
EVENT_MINUTES = 12


@dataclass(frozen=True)
class Event:
    """A reserve event in the simulated dispatch: epoch s start and end, W deployed."""

    start: float
    end: float
    power_w: int


@dataclass
class HistoryResult:
    blocks: int = 0
    awards: int = 0
    settlements: int = 0
    meter_values: int = 0
    reserve_awards: int = 0
    reserve_events: int = 0
    skipped: list[str] = field(default_factory=list)


Progress = Callable[[int, int, str], None]


def regd_signal() -> np.ndarray:
    """The RegD test signal's 2-s values (40 minutes), to be looped."""
    return read_signal_csv(REGD).values[:-1].astype(float)


def history_blocks(*, now: datetime, days: int = DAYS) -> list[tuple[datetime, int]]:
    """(start, hours) of every regulation block of the last ``days`` days that ended before ``now``."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    for back in range(days, -1, -1):
        day = today - timedelta(days=back)
        for hour, hours in BLOCKS:
            start = day + timedelta(hours=hour)
            if start + hours * HOUR + TAIL < now:
                out.append((start, hours))
    return out[-days * len(BLOCKS) :]


def demo_history_generate(
    *, now: datetime, days: int = DAYS, progress: Progress | None = None, seed: int = 11
) -> HistoryResult:
    """Generate the missing blocks of the last ``days`` days for every demo fleet (see the module docstring)."""
    product, reserve = demo_product(), demo_reserve_product()
    signal = regd_signal()
    rng = np.random.default_rng(seed)
    result = HistoryResult()
    jobs = [(p, f, s, h) for p, f in demo_portfolios() for s, h in history_blocks(now=now, days=days)]
    for n, (portfolio, fleet, start, hours) in enumerate(jobs):
        if progress is not None:
            progress(n, len(jobs), f"{portfolio} {start:%a %d %H:%M}")
        awards = _block(product, reserve, portfolio, fleet, start, hours, signal, rng, result, index=n)
        for award in awards:  # one award per hour, settled per the product's periods (the demo's: quarter-hours)
            for period_start, _ in settlement_periods(award):
                try:
                    settlement_compute(award=award, period_start=period_start)
                    result.settlements += 1
                except (RegulationError, SettlementError) as exc:
                    result.skipped.append(f"{portfolio} {period_start:%Y-%m-%d %H:%M}: {exc}")
        _flag(product, portfolio, start, hours)
        _flag(reserve, portfolio, start, hours)
    if progress is not None:
        progress(len(jobs), len(jobs), "done")
    return result


def _flag(product: Product, portfolio: str, start: datetime, hours: int) -> None:
    end = start + hours * HOUR
    Settlement.objects.filter(
        award__product=product, award__portfolio=portfolio, award__simulated=True, period_start__gte=start,
        period_start__lt=end,
    ).update(simulated=True)  # fmt: skip
    PerformanceScoreRecord.objects.filter(
        product=product, portfolio=portfolio, period_start__gte=start, period_start__lt=end
    ).filter(settlements__award__simulated=True).update(simulated=True)
    ReserveEventPerformance.objects.filter(
        deployment__product=product, deployment__portfolio=portfolio, deployment__source=SIMULATED,
        deployment__start__gte=start, deployment__start__lt=end,
    ).update(simulated=True)  # fmt: skip


def _free_stations(fleet: Fleet, start: datetime, end: datetime) -> list[str]:
    """The fleet organisation's stations with no plug session overlapping ``[start, end)``."""
    owned = sorted(
        StationOwnership.objects.filter(organisation=fleet.organisation).values_list("station__station_id", flat=True)
    )
    busy = set(
        PlugSession.objects.filter(station_id__in=owned, started_at__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
        .values_list("station_id", flat=True)
    )
    return [s for s in owned if s not in busy]


def _block(
    product: Product,
    reserve: Product,
    portfolio: str,
    fleet: Fleet,
    start: datetime,
    hours: int,
    signal: np.ndarray,
    rng: np.random.Generator,
    result: HistoryResult,
    *,
    index: int,
) -> list[Award]:
    end = start + hours * HOUR
    if Award.objects.filter(product=product, portfolio=portfolio, interval_start=start).exists():
        return []
    session_start, session_end = start - SESSION_MARGIN, end + TAIL + SESSION_MARGIN
    stations = _free_stations(fleet, session_start, session_end)
    plugged_now = PlugSession.objects.filter(ended_at__isnull=True).values_list("vehicle_id", flat=True)
    cars = list(
        Vehicle.objects.filter(fleet=fleet, ac_max_discharge_w__gt=0).exclude(id__in=plugged_now).order_by("id")
    )
    if not stations or not cars:
        result.skipped.append(f"{portfolio} {start:%Y-%m-%d %H:%M}: no free station or car")
        return []
    offset = (index * len(stations)) % len(cars)
    chosen = [cars[(offset + i) % len(cars)] for i in range(min(len(stations), len(cars)))]
    snapshots = [
        VehicleSnapshot(
            vehicle_id=car.id,
            capacity_wh=car.usable_capacity_wh,
            soc_wh=int(car.usable_capacity_wh * (0.55 + 0.1 * rng.random())),
            floor_wh=car.floor_wh,
            max_charge_w=car.ac_max_charge_w,
            max_discharge_w=car.ac_max_discharge_w,
            charge_efficiency=car.charge_efficiency,
            discharge_efficiency=car.discharge_efficiency,
            departure=session_end + timedelta(hours=2),
            target_wh=car.usable_capacity_wh * 80 // 100,
            station_id=station_id,
            evse_id=1,
        )
        for car, station_id in zip(chosen, stations, strict=False)
    ]
    reserve_w = reserve_offer_w(snapshots, at=start)
    capacity_w = offer_capacity_w(snapshots, at=start, reserve_w=reserve_w)
    if capacity_w < product.operator.min_bid_w:
        result.skipped.append(f"{portfolio} {start:%Y-%m-%d %H:%M}: {capacity_w} W is under the market minimum")
        return []
    with transaction.atomic():
        for car, snap in zip(chosen, snapshots, strict=True):
            tx = f"sim-{start:%Y%m%d%H}-{car.id}"
            session_open(
                vehicle=car, station_id=snap.station_id or "", evse_id=1, transaction_id=tx, matched_by="simulated",
                started_at=session_start,
            )  # fmt: skip
            session_close(station_id=snap.station_id or "", transaction_id=tx, ended_at=session_end)
        awards, reserves = [], []
        for k in range(hours):
            hour = start + k * HOUR
            prices_publish(product=product, hour=hour, known_at=hour - HOUR)
            held = offer_award(
                product=reserve, portfolio=portfolio, hour=hour, capacity_w=reserve_w, simulated=True,
                clearing=reserve_price(hour),
            )  # fmt: skip
            if held is not None and held.award is not None and held.award.awarded_w > 0:
                reserves.append(held.award)
            offer = offer_award(product=product, portfolio=portfolio, hour=hour, capacity_w=capacity_w, simulated=True)
            if offer is not None and offer.award is not None and offer.award.awarded_w > 0:
                awards.append(offer.award)
        if awards:
            events = _reserve_events(portfolio, start, reserves)
            result.meter_values += _simulate(
                product, portfolio, snapshots, start, end + TAIL, awards, signal, rng, reserves=reserves, events=events
            )
            result.blocks += 1
            result.awards += len(awards)
            result.reserve_awards += len(reserves)
            result.reserve_events += len(events)
    return awards + reserves


def _reserve_events(portfolio: str, start: datetime, reserves: list[Award]) -> list[Event]:
    """The block's reserve event (in its first hour, if reserve is held then), stored as the intake stores one."""
    at = start + EVENT_AFTER
    if not any(a.interval_start <= at < a.interval_end for a in reserves):
        return []
    row, _ = reserve_deployment_record(
        portfolio=portfolio, event_id=f"sim-{portfolio}-{at:%Y%m%dT%H%M}", power_w=None, start=at,
        end=at + timedelta(minutes=EVENT_MINUTES), source=SIMULATED,
    )  # fmt: skip
    return [Event(row.start.timestamp(), row.end.timestamp(), row.power_w)]


def _simulate(
    product: Product,
    portfolio: str,
    snapshots: list[VehicleSnapshot],
    start: datetime,
    end: datetime,
    awards: list[Award],
    signal: np.ndarray,
    rng: np.random.Generator,
    *,
    reserves: list[Award] | None = None,
    events: list[Event] | None = None,
) -> int:
    """Dispatch simulated every 2 s from ``start`` to ``end``; stores the signal, the basepoint and meter values.

    ``reserves``: reserve awards kept in the cars outside ``events`` (as dispatch keeps them); during an event the
    signal is held at its value at the event start and the setpoint carries the event's W."""
    fleet = FleetArrays.from_snapshots(snapshots)
    t0 = start.timestamp()
    steps = int((end - start).total_seconds() // STEP_S)
    capacity = max(a.awarded_w for a in awards)
    held_w = max((a.awarded_w for a in reserves or []), default=0)
    sustain_h = RESERVE_SUSTAIN_MINUTES / 60
    events = events or []
    bounds = power_bounds(reserve_room(fleet, held_w=held_w, sustain_h=sustain_h, now=t0)[0], now=t0, duration_s=60)
    preferred = int(np.maximum(bounds.lo, 0).sum())
    basepoint = basepoint_choose(
        min_w=int(bounds.lo.sum()), max_w=int(bounds.hi.sum()), capacity_w=capacity, preferred_w=preferred,
        current_w=None,
    )  # fmt: skip
    regulation_basepoint_record(product=product, portfolio=portfolio, at=start, basepoint_w=basepoint, source=SIMULATED)
    phase = int(t0 // STEP_S)
    values = signal[(phase + np.arange(steps)) % signal.size]
    deployed = np.zeros(steps, dtype=np.int64)
    times = t0 + STEP_S * np.arange(steps)
    for event in events:
        inside = (times >= event.start) & (times < event.end)
        if inside.any():
            values[inside] = values[int(np.flatnonzero(inside)[0])]  # the operator holds the signal
            deployed[inside] = event.power_w
    belief = datetime.now(UTC)
    RegulationSignal.objects.bulk_create(
        (
            RegulationSignal(
                product=product,
                portfolio=portfolio,
                at=start + timedelta(seconds=STEP_S * i),
                value=Decimal(f"{v:.5f}"),
                source=SIMULATED,
                source_ref="demo history: RegD test signal, looped",
                belief_time=belief,
            )
            for i, v in enumerate(values.tolist())
        ),
        batch_size=2000,
        ignore_conflicts=True,
    )
    stations = {s.station_id: s for s in Station.objects.filter(station_id__in=[v.station_id for v in snapshots])}
    power = np.zeros(len(snapshots))
    imported = np.zeros(len(snapshots))
    exported = np.zeros(len(snapshots))
    alpha = 1 - math.exp(-STEP_S / LAG_S)
    rows: list[tuple[object, ...]] = []
    every = METER_EVERY_S // STEP_S
    for i in range(steps):
        t = t0 + i * STEP_S
        if i % every == 0:  # the meter's reading at t: the power in force at t, before the car answers t's setpoint
            rows += _readings(stations, snapshots, t, power, imported, exported, rng)
        reserve_w = int(deployed[i])
        setpoint = fleet_setpoint_w(
            basepoint_w=basepoint, signal=float(values[i]), capacity_w=capacity, reserve_w=reserve_w
        )
        usable, _ = reserve_room(fleet, held_w=max(held_w - reserve_w, 0), sustain_h=sustain_h, now=t)
        share = allocate(usable, setpoint, now=t, duration_s=60).power_w.astype(float)
        power += (share - power) * alpha
        fleet = fleet.advance(power, STEP_S)
        imported += np.clip(power, 0, None) * STEP_S / 3600
        exported += np.clip(-power, 0, None) * STEP_S / 3600
    for first in range(0, len(rows), 20_000):
        insert_rows(MeterValue, METER_COLUMNS, rows[first : first + 20_000])
    return len(rows)


def _readings(
    stations: dict[str, Station],
    snapshots: list[VehicleSnapshot],
    t: float,
    power: np.ndarray,
    imported: np.ndarray,
    exported: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple[object, ...]]:
    """Each car's meter reading at ``t`` (power with meter noise, energy registers), as MeterValue columns."""
    at = datetime.fromtimestamp(t, UTC)
    measured = np.rint(power + rng.normal(0, 1, power.size) * (0.002 * np.abs(power) + 5.0))
    rows: list[tuple[object, ...]] = []
    for k, snap in enumerate(snapshots):
        station = stations[snap.station_id or ""]
        for measurand, value, unit in (
            ("Power.Active.Import", max(measured[k], 0), "W"),
            ("Power.Active.Export", max(-measured[k], 0), "W"),
            ("Energy.Active.Import.Register", round(imported[k]), "Wh"),
            ("Energy.Active.Export.Register", round(exported[k]), "Wh"),
        ):
            received = at + timedelta(seconds=1)
            rows.append((station.pk, 1, at, received, measurand, "", "", "", int(value), unit, SIMULATED))
    return rows


METER_COLUMNS = (
    "station_id", "evse_id", "timestamp", "received_at", "measurand", "phase", "location", "context", "value", "unit",
    "source",
)  # fmt: skip
