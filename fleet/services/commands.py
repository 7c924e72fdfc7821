"""What a person asks of a vehicle, audited: the one-off target for the next trip (here) and the record of every
such request (:func:`vehicle_command_record`, also used by ``vpp.dashboard.services`` for "discharge now").

A refused request is recorded with its reason before :class:`~fleet.services.errors.FleetError` is raised.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from fleet import selectors
from fleet.models import DeparturePlan, PlanSource, Vehicle, VehicleCommand
from fleet.services.errors import FleetError
from fleet.services.vehicles import departure_plan_set

TRIP_TARGET = "trip_target"
DISCHARGE_NOW = "discharge_now"


def vehicle_command_record(
    *,
    vehicle: Vehicle,
    action: str,
    request: dict[str, Any],
    outcome: str,
    actor_user_id: int | None,
    actor_label: str,
    reason: str = "",
    requested_at: datetime | None = None,
) -> VehicleCommand:
    return VehicleCommand.objects.create(
        vehicle=vehicle,
        user_id=actor_user_id,
        actor_label=actor_label[:150],
        action=action,
        request=request,
        outcome=outcome,
        reason=reason,
        requested_at=requested_at or timezone.now(),
    )


def trip_target_set(
    *, vehicle: Vehicle, target_soc_pct: int, actor_user_id: int | None, actor_label: str, now: datetime | None = None
) -> DeparturePlan:
    """Set the target of the vehicle's next departure only (a fleet manager's plan for that departure; the weekly
    schedule is untouched, so the trip after it has its usual target again). Audited; refusals too."""
    now = now or timezone.now()
    request: dict[str, Any] = {"target_soc_pct": target_soc_pct}
    snapshot = selectors.vehicle_snapshot(vehicle, at=now)
    reason = ""
    if not 0 <= target_soc_pct <= 100:
        reason = "the target must be within 0..100 %"
    elif snapshot is None or snapshot.departure is None:
        reason = "no next departure is known for this car: set a departure (or a weekly schedule) first"
    elif snapshot.departure <= now:
        reason = f"the departure at {snapshot.departure:%Y-%m-%d %H:%M} UTC has passed"
    elif target_soc_pct < vehicle.effective_floor_pct:
        reason = f"the target is below the car's mobility floor of {vehicle.effective_floor_pct} %"
    if reason:
        vehicle_command_record(
            vehicle=vehicle,
            action=TRIP_TARGET,
            request=request,
            outcome=VehicleCommand.Outcome.REFUSED,
            actor_user_id=actor_user_id,
            actor_label=actor_label,
            reason=reason,
            requested_at=now,
        )
        raise FleetError(reason)
    assert snapshot is not None
    assert snapshot.departure is not None
    plan = departure_plan_set(
        vehicle=vehicle,
        departure_at=snapshot.departure,
        target_soc_pct=target_soc_pct,
        source=PlanSource.FLEET_MANAGER,
        known_at=now,
        session=selectors.open_session(vehicle.id),
    )
    request["departure_at"] = snapshot.departure.isoformat()
    vehicle_command_record(
        vehicle=vehicle,
        action=TRIP_TARGET,
        request=request,
        outcome=VehicleCommand.Outcome.DONE,
        actor_user_id=actor_user_id,
        actor_label=actor_label,
        requested_at=now,
    )
    return plan
