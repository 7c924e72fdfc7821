"""A bid's expected pack wear, priced by the function settlement charges it with. Pure, no Django.

Settlement charges each vehicle :func:`fleet.numerics.degradation.cycle_aging_cost` of its metered SoC trace; here
the same function prices the SoC trace a schedule plans for each vehicle, so expected and settled cost are computed
the same way and differ only by how far the delivery differs from the plan.

The planned trace (:func:`planned_soc_trace`), per problem interval ``t``, from the SoC at its start:

1. the expected up activation of the capacity held (``sum_k reserved_k x up_activation_k x h``, grid Wh,
   ``/ eta_d`` at the pack) is discharged first,
2. then the expected down activation (``x eta_c``) and the operating point (``charge x eta_c - discharge / eta_d``)
   bring it to the next interval's SoC.

So each interval holding capacity contributes one swing of its expected activation energy, which rainflow counts as
one cycle of that depth; an interval at its operating point only adds its monotone move.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from fleet.numerics.degradation import cycle_aging_cost
from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser.problem import BidProblem, BidSchedule, FloatArray, VehiclePlan


def planned_soc_trace(problem: BidProblem, vehicle: VehicleSnapshot, plan: VehiclePlan) -> FloatArray:
    """SoC fractions the plan implies: the start, then two points per interval (module docstring)."""
    h = problem.step_h
    eta_c, eta_d = vehicle.charge_efficiency, vehicle.discharge_efficiency
    up = np.zeros(problem.steps)
    down = np.zeros(problem.steps)
    for prod in problem.products:
        held = plan.reserved_w.get(prod.code)
        if held is not None:
            up += np.asarray(held, dtype=np.float64) * prod.up_activation * h
            down += np.asarray(held, dtype=np.float64) * prod.down_activation * h
    operating = (np.asarray(plan.charge_w) * eta_c - np.asarray(plan.discharge_w) / eta_d) * h
    capacity = float(vehicle.capacity_wh)
    soc = float(vehicle.soc_wh)
    points = [soc]
    for t in range(problem.steps):
        low = soc - up[t] / eta_d
        soc = low + down[t] * eta_c + operating[t] + 0.0
        points += [low, soc]
    return np.clip(np.asarray(points) / capacity, 0.0, 1.0)


def expected_vehicle_wear(problem: BidProblem, vehicle: VehicleSnapshot, plan: VehiclePlan) -> Decimal:
    """$ the plan is expected to cost this vehicle's pack (its own rating, its temperature now)."""
    return cycle_aging_cost(
        planned_soc_trace(problem, vehicle, plan),
        capacity_wh=vehicle.capacity_wh,
        params=vehicle.degradation,
        temperature_c=vehicle.temperature_c,
    )


def expected_wear(problem: BidProblem, schedule: BidSchedule) -> Decimal:
    """$ of pack wear the schedule is expected to cost the fleet, vehicle by vehicle."""
    total = Decimal(0)
    for vehicle in problem.vehicles:
        plan = schedule.plan(vehicle.vehicle_id)
        if plan is not None:
            total += expected_vehicle_wear(problem, vehicle, plan)
    return total
