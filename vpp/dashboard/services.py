"""What a fleet manager commands from the dashboard: "discharge now" (here) and the one-off trip target
(``fleet.services.commands.trip_target_set``). Both audited per request in ``fleet.VehicleCommand``, refusals too.

**Discharge now** sends the car's station one SetChargingProfile through ``chargers.services.station_call`` (audited
there as well, as every station command): an OCPP 2.1 CentralSetpoint of ``-power`` with ``validTo`` = now +
duration, so the station stops by itself when the time is up, at a stack level above regulation dispatch's so it
holds for its duration. The duration is checked against the energy above the mobility floor before anything is
sent (:func:`fleet.numerics.departure.discharge_refusal`): a request that would cross the floor is refused with
the reason and how long the car could discharge at that power.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from chargers.models import Station, Transaction
from chargers.services.station_call import StationCallError, station_call
from fleet import selectors
from fleet.models import Vehicle, VehicleCommand
from fleet.numerics.departure import discharge_refusal
from fleet.services.commands import DISCHARGE_NOW, vehicle_command_record
from vpp.dispatch.values import STACK_LEVEL, Route, profile_payload

DISCHARGE_PROFILE_ID = 7_701  # its own profile id: regulation's (7_700) is left in place underneath
DISCHARGE_STACK_LEVEL = STACK_LEVEL + 10
MAX_MINUTES = 240
CALL_TIMEOUT_S = 15.0


class DischargeRefused(Exception):
    """Nothing was sent (or the station refused): ``reason`` says why, fit for the fleet manager."""

    def __init__(self, reason: str, *, sent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


@dataclass(frozen=True)
class DischargeStarted:
    station_id: str
    power_w: int
    until: datetime
    answer: dict[str, Any]


def discharge_now(
    *,
    vehicle: Vehicle,
    power_kw: float,
    minutes: float,
    actor_user_id: int | None,
    actor_label: str,
    now: datetime | None = None,
) -> DischargeStarted:
    """Discharge the car at ``power_kw`` (grid side) for ``minutes``, never below its floor; audited.

    Raises :class:`DischargeRefused` (recorded with its reason) when the car is not plugged in, its station is
    offline or cannot discharge (OCPP 2.0.1), the request would cross the floor, or the station refuses.
    """
    now = now or timezone.now()
    power_w = round(power_kw * 1000)
    request: dict[str, Any] = {"power_kw": power_kw, "minutes": minutes}

    def refuse(reason: str, *, sent: bool = False, outcome: str = VehicleCommand.Outcome.REFUSED) -> DischargeRefused:
        vehicle_command_record(
            vehicle=vehicle,
            action=DISCHARGE_NOW,
            request=request,
            outcome=outcome,
            actor_user_id=actor_user_id,
            actor_label=actor_label,
            reason=reason,
            requested_at=now,
        )
        return DischargeRefused(reason, sent=sent)

    if not 0 < minutes <= MAX_MINUTES:
        raise refuse(f"the duration must be between 1 and {MAX_MINUTES} minutes")
    session = selectors.open_session(vehicle.id)
    snapshot = selectors.vehicle_snapshot(vehicle, at=now)
    if session is None or snapshot is None:
        raise refuse("the car is not plugged in (or its state of charge is unknown): nothing to discharge")
    station = Station.objects.filter(station_id=session.station_id).first()
    if station is None or not station.online or not station.channel_name:
        raise refuse(f"station {session.station_id} is offline: the command cannot reach it")
    if station.ocpp_version != "2.1":
        raise refuse(f"station {session.station_id} speaks OCPP {station.ocpp_version or '2.0.1'}: it cannot discharge")
    why = discharge_refusal(snapshot, power_w=power_w, minutes=minutes)
    if why is not None:
        raise refuse(why)
    evse_id = session.evse_id or 1
    tx = (
        Transaction.objects.filter(station=station, active=True, evse_id=evse_id).order_by("-started_at").first()
        or Transaction.objects.filter(station=station, active=True).order_by("-started_at").first()
    )
    until = now + timedelta(minutes=minutes)
    payload = profile_payload(
        Route(station.station_id, evse_id, "2.1", tx.transaction_id if tx else ""),
        -power_w,
        -power_w,
        0,
        valid_to=until,
    )
    payload["chargingProfile"].update(id=DISCHARGE_PROFILE_ID, stackLevel=DISCHARGE_STACK_LEVEL)
    try:
        answer = station_call(
            station_id=station.station_id,
            action="SetChargingProfile",
            payload=payload,
            actor_user_id=actor_user_id,
            actor_label=actor_label,
            timeout=CALL_TIMEOUT_S,
        )
    except StationCallError as exc:
        raise refuse(f"the station did not take it: {exc}", sent=True, outcome=VehicleCommand.Outcome.FAILED) from exc
    if answer.get("status") != "Accepted":
        raise refuse(f"the station answered {answer.get('status')!r}", sent=True, outcome=VehicleCommand.Outcome.FAILED)
    request["until"] = until.isoformat()
    vehicle_command_record(
        vehicle=vehicle,
        action=DISCHARGE_NOW,
        request=request,
        outcome=VehicleCommand.Outcome.DONE,
        actor_user_id=actor_user_id,
        actor_label=actor_label,
        requested_at=now,
    )
    return DischargeStarted(station.station_id, power_w, until, answer)
