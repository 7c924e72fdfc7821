"""Fleet side of committed CSMS telemetry: match sessions to vehicles, track SoC beliefs and ISO 15118 needs.

``on_telemetry_committed`` is called by ``chargers.telemetry.telemetry_committed`` right after the COMMIT that stored
the readings; it only filters and enqueues (``fleet.tasks.ingest_telemetry``); the work happens in the task, which
calls :func:`telemetry_ingest`. Everything here is idempotent: a redelivered batch changes nothing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chargers.models import ENERGY_IMPORT_REGISTER, EvChargingNeeds
from chargers.models import Transaction as ChargerTransaction
from fleet import jobs, selectors
from fleet.models import DeparturePlan, PlanSource, PlugSession, SocEstimate, SocSource, Vehicle
from fleet.services import vehicles
from fleet.services.errors import FleetError

LOG = logging.getLogger(__name__)

SOC = "SoC"
IMPORT = ENERGY_IMPORT_REGISTER
EXPORT = "Energy.Active.Export.Register"
# The pack temperature the station reports for the EV (MeterValues measurand Temperature at location EV), passed on
# in milli-degC whatever unit the station used.
PACK_TEMPERATURE = "Temperature@EV"
FREE_STATUSES = {"Available"}
# How far ahead of this server's clock a reading may be stamped and still be applied: station clocks drift by
# seconds (NTP keeps them within that); minutes ahead means a wrong clock, not a fast one.
MAX_AHEAD = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Reading:
    """The part of a CSMS telemetry update the fleet uses (plain data, safe to pass to Celery as a dict)."""

    station_id: str
    kind: str
    timestamp: datetime
    evse_id: int = 0
    values: dict[str, int] = field(default_factory=dict)
    status: str = ""
    transaction_id: str = ""

    def as_message(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "kind": self.kind,
            "timestamp": self.timestamp.isoformat(),
            "evse_id": self.evse_id,
            "values": self.values,
            "status": self.status,
            "transaction_id": self.transaction_id,
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Reading:
        return cls(
            station_id=str(data["station_id"]),
            kind=str(data["kind"]),
            timestamp=datetime.fromisoformat(data["timestamp"]),
            evse_id=int(data.get("evse_id") or 0),
            values={str(k): int(v) for k, v in (data.get("values") or {}).items()},
            status=str(data.get("status") or ""),
            transaction_id=str(data.get("transaction_id") or ""),
        )


def _relevant(update: Any) -> bool:
    if update.kind == "status":
        return update.status in FREE_STATUSES
    return update.kind == "meter" and bool(
        update.transaction_id or SOC in update.values or IMPORT in update.values or PACK_TEMPERATURE in update.values
    )


def _fleet_values(update: Any) -> dict[str, int]:
    """SoC, registers and the pack temperature in milli-degC (a temperature in an unknown unit is left out)."""
    values = {k: v for k, v in update.values.items() if k in (SOC, IMPORT, EXPORT)}
    if PACK_TEMPERATURE in update.values:
        unit = (getattr(update, "units", None) or {}).get(PACK_TEMPERATURE, "mCelsius")
        offset = {"mCelsius": 0, "mK": -273_150}.get(unit)
        if offset is not None:
            values[PACK_TEMPERATURE] = int(update.values[PACK_TEMPERATURE]) + offset
    return values


def on_telemetry_committed(updates: Iterable[Any]) -> None:
    """Hook for the CSMS: enqueue one ingest task for the readings that concern vehicles. Never raises."""
    try:
        readings = [
            Reading(
                station_id=u.station_id,
                kind=u.kind,
                timestamp=u.timestamp,
                evse_id=u.evse_id,
                values=_fleet_values(u),
                status=u.status,
                transaction_id=u.transaction_id,
            ).as_message()
            for u in updates
            if _relevant(u)
        ]
        if not readings:
            return
        if COALESCER.window_s > 0 and not jobs.tasks_run_eagerly():
            COALESCER.add(readings)
            return
        # This runs on the CSMS's writer thread: never wait on the broker here (jobs.task_enqueue_background).
        # What a broker outage long enough to fill its queue loses: the oldest ingest batches. Mostly
        # superseded by the next readings (SoC reports are absolute, energy registers cumulative, and the next
        # reading of a transaction opens its session); a dropped "Available" status leaves a plug session open
        # until that EVSE next reports Available or a reading of its ended transaction arrives. The readings
        # themselves stay in the CSMS's tables.
        jobs.task_enqueue_background(name=jobs.INGEST_TELEMETRY, args=(readings,))
    except Exception:  # the CSMS has already stored and acknowledged the data: never fail it from here
        LOG.exception("fleet telemetry hook failed")


class ReadingCoalescer:
    """Fleet readings held for ``window_s`` and handed on as one ingest task (through ``jobs.PUBLISHER``).

    A status change is handed on at once, with the readings held so far. Kept: the newest meter reading of each
    station, EVSE, transaction and set of measurands (a reading that carries SoC or the pack temperature is never
    replaced by a newer one that does not), and every status change, in time order at ingest. What that drops
    changes nothing the fleet keeps: energy registers are cumulative, SoC reports absolute; only the metered
    refinement within one SoC percent between two reports of a window is coarser. Thread-safe: ``add`` runs on the
    CSMS's writer thread and never blocks on the broker; a daemon thread flushes. Bounded: ``max_statuses`` status
    messages at most (the oldest dropped, logged); meter readings one per key.
    """

    def __init__(
        self, *, window_s: float, publish: Callable[[list[dict[str, Any]]], object], max_statuses: int = 10_000
    ):
        self.window_s = window_s
        self.max_statuses = max_statuses
        self._publish = publish
        self._meters: dict[tuple[str, int, str, frozenset[str]], dict[str, Any]] = {}
        self._statuses: collections.deque[dict[str, Any]] = collections.deque()
        self._dropped = 0
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, messages: Iterable[dict[str, Any]]) -> None:
        with self._ready:
            for m in messages:
                if m["kind"] == "status":
                    if len(self._statuses) >= self.max_statuses:
                        self._statuses.popleft()
                        self._dropped += 1
                        if self._dropped == 1 or self._dropped % 1000 == 0:
                            LOG.error("fleet ingest: %d status changes dropped (the flush thread is not keeping up)",
                                      self._dropped)  # fmt: skip
                    self._statuses.append(m)
                    continue
                key = (m["station_id"], m["evse_id"], m["transaction_id"], frozenset(m["values"]))
                held = self._meters.get(key)
                if held is None or _instant(m) >= _instant(held):  # a reordered batch keeps the newest
                    self._meters[key] = m
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fleet-ingest-window", daemon=True)
                self._thread.start()
            self._ready.notify()

    def flush(self) -> int:
        """Hand everything held to ``publish`` as one message now; returns how many readings it carried."""
        # Handed on under the lock (publish only queues): a graceful exit's flush that finds nothing held must mean
        # the window thread's last batch is already with the publisher, not between the two.
        with self._ready:
            batch = [*self._statuses, *self._meters.values()]
            self._statuses.clear()
            self._meters.clear()
            if batch:
                self._publish(batch)
        return len(batch)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._statuses and not self._meters:
                    self._ready.wait()
                # Collect meter readings for one window; a status change (a car leaving, a connector free) goes at
                # once: the dispatcher must stop counting on that car now, not a window later. Statuses are rare.
                deadline = time.monotonic() + self.window_s
                while not self._statuses and (left := deadline - time.monotonic()) > 0:
                    self._ready.wait(left)
            try:
                self.flush()
            except Exception:  # never let the thread die: the next window flushes again
                LOG.exception("fleet ingest: could not hand readings on")


def _instant(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(message["timestamp"])


def _publish_ingest(messages: list[dict[str, Any]]) -> None:
    jobs.PUBLISHER.put(jobs.INGEST_TELEMETRY, (messages,))


#: The process's coalescer (the window is read once, at import: FLEET_INGEST_WINDOW_S).
COALESCER = ReadingCoalescer(window_s=settings.FLEET_INGEST_WINDOW_S, publish=_publish_ingest)

#: How long a server that exits gracefully waits for its held readings to reach the broker.
EXIT_DRAIN_S = 3.0


def held_readings_hand_on(*, timeout_s: float = EXIT_DRAIN_S) -> int:
    """At a graceful exit: hand the window's held readings on and wait (bounded) for the broker to take them.

    Without it a server stopped for a deploy drops up to one window of readings from the fleet's view (they stay in
    the CSMS's own tables; the next reading carries the cumulative registers). A broker that is away is not waited
    for longer than ``timeout_s``: what is left is logged. Returns the messages left unpublished.
    """
    if not COALESCER.flush() and not jobs.PUBLISHER.pending():
        return 0
    left = jobs.PUBLISHER.drain(timeout_s=timeout_s)
    if left:
        LOG.warning("fleet ingest: %d task messages not handed to the broker at exit (waited %.0f s)", left, timeout_s)
    return left


def telemetry_ingest(*, readings: Sequence[Reading]) -> int:
    """Apply readings in time order; returns how many touched a vehicle.

    Readings from stations that never saw a fleet vehicle, and whose transactions carry no vehicle's token, are
    dropped with two or three queries per batch, so a CSMS full of foreign stations pays next to nothing.
    """
    touched = 0
    ahead_limit = timezone.now() + MAX_AHEAD
    for reading in sorted(_fleet_readings(readings), key=lambda r: r.timestamp):
        if reading.timestamp > ahead_limit:
            # A station clock running ahead would make this reading the newest belief for as long as the clock
            # is wrong: every true reading after it would be "older" and ignored (SoC, pack temperature). The
            # reading stays in the CSMS's tables; the fleet waits for one it can place in time.
            LOG.warning(
                "station %s: reading stamped %s is more than %d s ahead of this server's clock; not applied to the "
                "fleet (check the station's time source)",
                reading.station_id, reading.timestamp.isoformat(), MAX_AHEAD.total_seconds(),
            )  # fmt: skip
            continue
        with transaction.atomic():
            touched += _apply(reading)
    return touched


def _fleet_readings(readings: Sequence[Reading]) -> list[Reading]:
    """The readings that may concern a vehicle: a station with fleet session history, or a vehicle's token."""
    stations = {r.station_id for r in readings}
    known = set(PlugSession.objects.filter(station_id__in=stations).values_list("station_id", flat=True).distinct())
    unknown = {(r.station_id, r.transaction_id) for r in readings if r.station_id not in known and r.transaction_id}
    if unknown:
        tokens = dict(
            ChargerTransaction.objects.filter(
                station__station_id__in={s for s, _ in unknown},
                transaction_id__in={t for _, t in unknown},
                active=True,
            )
            .exclude(id_token="")
            .values_list("id_token", "station__station_id")
        )
        if tokens:
            matched = Vehicle.objects.filter(Q(id_token__in=tokens) | Q(evccid__in=tokens))
            for vehicle_token in matched.values_list("id_token", "evccid"):
                known |= {tokens[t] for t in vehicle_token if t in tokens}
    return [r for r in readings if r.station_id in known]


def _apply(reading: Reading) -> int:
    if reading.kind == "status":
        return _close_at_evse(reading)
    session = _session_for(reading)
    if session is None:
        return 0
    if session.charger_transaction is not None and not session.charger_transaction.active:
        ended = session.charger_transaction.ended_at or reading.timestamp
        vehicles.session_close(station_id=session.station_id, transaction_id=session.transaction_id, ended_at=ended)
        return 1
    _apply_charging_needs(session)
    _apply_needs_soc(session, reading)
    _apply_soc(session.vehicle, reading)
    _apply_temperature(session.vehicle, reading)
    return 1


def _apply_temperature(vehicle: Vehicle, reading: Reading) -> None:
    """The pack temperature the station reported for the EV becomes the vehicle's (derating, allocation, bids)."""
    milli = reading.values.get(PACK_TEMPERATURE)
    if milli is None:
        return
    try:
        vehicles.pack_temperature_report(vehicle=vehicle, temperature_c=milli / 1000.0, valid_at=reading.timestamp)
    except FleetError as exc:  # a broken sensor: keep the last good value, say so
        LOG.warning("vehicle %s at %s: %s; reading ignored", vehicle.id, reading.station_id, exc)


def _close_at_evse(reading: Reading) -> int:
    """A connector back to Available means the car is gone: close any open session on that EVSE."""
    open_ids = list(
        PlugSession.objects.filter(
            station_id=reading.station_id, evse_id=reading.evse_id, ended_at__isnull=True
        ).values_list("transaction_id", flat=True)
    )
    for tx_id in open_ids:
        vehicles.session_close(station_id=reading.station_id, transaction_id=tx_id, ended_at=reading.timestamp)
    return len(open_ids)


def _session_for(reading: Reading) -> PlugSession | None:
    """The open session the reading belongs to, opening it when the transaction's id token names a vehicle."""
    sessions = PlugSession.objects.select_related("vehicle", "vehicle__fleet", "charger_transaction").filter(
        station_id=reading.station_id, ended_at__isnull=True
    )
    if reading.transaction_id:
        found = sessions.filter(transaction_id=reading.transaction_id).first()
    else:
        found = sessions.filter(evse_id=reading.evse_id).first() if reading.evse_id else None
    if found is not None or not reading.transaction_id:
        return found
    tx = (
        ChargerTransaction.objects.select_related("station")
        .filter(station__station_id=reading.station_id, transaction_id=reading.transaction_id)
        .first()
    )
    if tx is None or not tx.active:
        return None
    evse_id = tx.evse_id or reading.evse_id or None
    if tx.id_token:
        # With ISO 15118 the token can be the EV's EVCCID (MacAddress type); else a card or app token.
        match = vehicles.vehicle_match(id_token=tx.id_token, evccid=tx.id_token)
    else:
        match = _bay_vehicle(reading.station_id, evse_id)
    if match is None:
        return None
    vehicle, matched_by = match
    session = vehicles.session_open(
        vehicle=vehicle,
        station_id=reading.station_id,
        evse_id=evse_id,
        transaction_id=tx.transaction_id,
        matched_by=matched_by,
        started_at=tx.started_at or reading.timestamp,
    )
    if session.transaction_id == tx.transaction_id and session.transaction_id != "":
        PlugSession.objects.filter(id=session.id).update(charger_transaction=tx)
        session.charger_transaction = tx
    return session


def _bay_vehicle(station_id: str, evse_id: int | None) -> tuple[Vehicle, str] | None:
    """A plug-in without any id token at a depot bay: the vehicle that used this EVSE last, if not plugged elsewhere.

    Depot chargers are usually assigned to vehicles (cable plugged in, no card); a presented but unknown token is
    never matched this way, since it says the car is someone else's.
    """
    if evse_id is None:
        return None
    last = (
        PlugSession.objects.select_related("vehicle", "vehicle__fleet")
        .filter(station_id=station_id, evse_id=evse_id)
        .order_by("-started_at", "-id")
        .first()
    )
    if last is None:
        return None
    elsewhere = selectors.open_session(last.vehicle_id)
    if elsewhere is not None and (elsewhere.station_id, elsewhere.evse_id) != (station_id, evse_id):
        return None
    return last.vehicle, "bay"


def _apply_charging_needs(session: PlugSession) -> None:
    """The newest NotifyEVChargingNeeds of this EVSE since plug-in: V2X limits and the driver's departure."""
    if session.evse_id is None:
        return
    needs = (
        EvChargingNeeds.objects.filter(
            station__station_id=session.station_id, evse_id=session.evse_id, received_at__gte=session.started_at
        )
        .order_by("-received_at", "-id")
        .first()
    )
    if needs is None:
        return
    limits = {
        "ev_max_charge_w": needs.max_charge_power_w or needs.ev_max_power_w,
        "ev_max_discharge_w": needs.max_discharge_power_w,
    }
    if any(v is not None and getattr(session, k) != v for k, v in limits.items()):
        vehicles.session_set_limits(session=session, **limits)
    target_pct = _target_pct(session.vehicle, needs)
    if needs.departure_time is None or target_pct is None:
        return
    latest = DeparturePlan.objects.filter(session=session, source=PlanSource.STATION).order_by("-known_at").first()
    if latest is not None and (latest.departure_at, latest.target_soc_pct) == (needs.departure_time, target_pct):
        return
    vehicles.departure_plan_set(
        vehicle=session.vehicle,
        departure_at=needs.departure_time,
        target_soc_pct=target_pct,
        source=PlanSource.STATION,
        known_at=needs.received_at,
        session=session,
    )


def _apply_needs_soc(session: PlugSession, reading: Reading) -> None:
    """For a station whose meter values carry no SoC: the EV's SoC from its ISO 15118 DC charging parameters
    (OCPP ``dcChargingParameters.stateOfCharge`` of the newest NotifyEVChargingNeeds) is a report, taken with this
    reading's registers (the first reading after the needs arrived) so the meter can advance it."""
    if SOC in reading.values or session.evse_id is None:
        return
    needs = (
        EvChargingNeeds.objects.filter(
            station__station_id=session.station_id, evse_id=session.evse_id, received_at__gte=session.started_at
        )
        .order_by("-received_at", "-id")
        .first()
    )
    dc = needs.payload.get("dcChargingParameters") if needs is not None and isinstance(needs.payload, dict) else None
    pct = dc.get("stateOfCharge") if isinstance(dc, dict) else None
    if needs is None or not isinstance(pct, int) or not 0 <= pct <= 100 or reading.timestamp < needs.received_at:
        return
    vehicle = session.vehicle
    if SocEstimate.objects.filter(vehicle=vehicle, source=SocSource.REPORTED, valid_at__gte=needs.received_at).exists():
        return
    imported, exported = reading.values.get(IMPORT), reading.values.get(EXPORT)
    vehicles.soc_report(
        vehicle=vehicle,
        soc_wh=vehicle.usable_capacity_wh * pct // 100,
        valid_at=reading.timestamp,
        import_register_wh=imported,
        export_register_wh=exported if exported is not None else (0 if imported is not None else None),
    )


def _target_pct(vehicle: Vehicle, needs: EvChargingNeeds) -> int | None:
    """Target SoC the EV asked for: explicit targetSoC, else the energy request on top of the current belief."""
    if needs.target_soc is not None:
        return int(needs.target_soc)
    energy = needs.ev_target_energy_request_wh or needs.energy_amount_wh
    belief = selectors.latest_soc(vehicle.id)
    if energy is None or belief is None:
        return None
    return min(100, round((belief.soc_wh + energy) * 100 / vehicle.usable_capacity_wh))


def _apply_soc(vehicle: Vehicle, reading: Reading) -> None:
    """A changed SoC report resets the chain; otherwise the meter registers advance the last report.

    Stations report SoC in whole percent: while the percentage stays the same, the metered estimate is the finer
    figure, so an unchanged report does not reset it.
    """
    pct = reading.values.get(SOC)
    imported, exported = reading.values.get(IMPORT), reading.values.get(EXPORT)
    last_report = (
        SocEstimate.objects.filter(vehicle=vehicle, source=SocSource.REPORTED, valid_at__lte=reading.timestamp)
        .order_by("-valid_at", "-id")
        .first()
    )
    reported_pct = round(last_report.soc_wh * 100 / vehicle.usable_capacity_wh) if last_report else None
    if pct is not None and 0 <= pct <= 100 and (last_report is None or pct != reported_pct):
        if last_report is not None and last_report.valid_at == reading.timestamp:
            return  # the same reading again
        vehicles.soc_report(
            vehicle=vehicle,
            soc_wh=vehicle.usable_capacity_wh * pct // 100,
            valid_at=reading.timestamp,
            import_register_wh=imported,
            export_register_wh=exported if exported is not None else (0 if imported is not None else None),
        )
        return
    if imported is not None:
        vehicles.soc_advance(
            vehicle=vehicle,
            import_register_wh=imported,
            export_register_wh=exported or 0,
            valid_at=reading.timestamp,
        )
