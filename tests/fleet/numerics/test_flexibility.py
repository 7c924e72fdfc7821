"""Flexibility envelope: hand-computed single car, fleet sums and node grouping, safety over random fleets."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.numerics.allocation import allocate
from fleet.numerics.flexibility import fleet_flexibility, vehicle_flexibility
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.numerics.thermal import charge_derate, discharge_derate
from tests.fleet.numerics.strategies import NOW, car, fleets

CAR = car(
    max_charge_w=11_000,
    max_discharge_w=11_000,
    departure=NOW + timedelta(hours=4),
    target_wh=48_000,
)


def test_a_single_car_envelope_matches_the_hand_computation() -> None:
    # when the car's envelope is computed over 4 h in 15-min steps
    env = vehicle_flexibility(CAR, start=NOW, intervals=17)
    # then the baseline charges 18 kWh at 11 kW: six full intervals, 1.5 kWh (6 kW) in the seventh, then idle
    assert env.baseline_w.tolist()[:8] == [11_000] * 6 + [6_000, 0]
    # and from the first interval it can swing from +11 kW to -11 kW (floor and need far away)
    assert (env.up_w[0], env.down_w[0]) == (22_000, 0)
    # the last interval before departure: 48 kWh stored, target 48 kWh => no discharge, charge still possible
    assert (env.min_w[15], env.max_w[15]) == (0, 11_000)
    # one interval earlier the need is 48 - 11 * 0.25 = 45.25 kWh => a full 11 kW discharge for 15 min fits
    assert env.min_w[14] == -11_000
    # after departure the car offers nothing
    assert env.available.tolist()[15:] == [1, 0]
    assert (env.up_w[16], env.down_w[16], env.baseline_w[16]) == (0, 0, 0)
    # energy headroom at the start: 18 kWh above the floor, 30 kWh to full
    assert (env.up_energy_wh[0], env.down_energy_wh[0]) == (18_000, 30_000)


def test_a_longer_hold_offers_less_near_the_floor() -> None:
    low = replace(CAR, soc_wh=14_000, target_wh=0, departure=None)  # 2 kWh above the floor
    short = vehicle_flexibility(low, start=NOW, intervals=1, hold_s=900)
    long = vehicle_flexibility(low, start=NOW, intervals=1, hold_s=3600)
    assert short.min_w[0] == -8_000  # 2 kWh over 15 min
    assert long.min_w[0] == -2_000  # 2 kWh over 1 h


def test_fleet_figures_are_the_sum_of_cars_grouped_by_node() -> None:
    cars = [replace(CAR, vehicle_id=i, node=node) for i, node in enumerate(["a", "a", "b"], start=1)]
    flex = fleet_flexibility(cars, start=NOW, intervals=8, per_vehicle=True)
    single = vehicle_flexibility(CAR, start=NOW, intervals=8)
    assert flex.total.up_w.tolist() == (3 * single.up_w).tolist()
    assert flex.by_node["a"].down_w.tolist() == (2 * single.down_w).tolist()
    assert flex.by_node["b"].baseline_w.tolist() == single.baseline_w.tolist()
    assert flex.per_vehicle is not None
    assert flex.per_vehicle.up_w.shape == (3, 8)
    assert flex.total.interval_starts[1] == NOW + timedelta(minutes=15)
    assert flex.total.as_dict()["interval_starts"] == [t.isoformat() for t in flex.total.interval_starts]


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(max_size=12), interval=st.sampled_from([300, 900]))
def test_the_first_interval_offer_is_deliverable_by_allocation(fleet: list[VehicleSnapshot], interval: int) -> None:
    # given the envelope for the next interval of the cars that stay plugged in for it
    flex = fleet_flexibility(fleet, start=NOW, intervals=1, interval_s=interval, per_vehicle=True)
    assert flex.per_vehicle is not None
    staying = [v for v, ok in zip(fleet, flex.per_vehicle.available[:, 0].tolist(), strict=True) if ok]
    offer = fleet_flexibility(staying, start=NOW, intervals=1, interval_s=interval).total
    # then the offered extremes are inside what the allocator can deliver for the same interval
    up = allocate(staying, int(offer.min_w[0]), now=NOW, duration_s=interval)
    down = allocate(staying, int(offer.max_w[0]), now=NOW, duration_s=interval)
    assert up.feasible
    assert down.feasible
    assert (flex.total.up_w >= 0).all()
    assert (flex.total.down_w >= 0).all()
    assert np.all(flex.total.up_energy_wh >= 0)


@settings(max_examples=120, deadline=None)
@given(
    fleet=fleets(max_size=8),
    interval=st.sampled_from([900, 3600]),
    hold=st.sampled_from([900, 1800, 3600]),
)
def test_every_offer_is_holdable_from_the_baseline_without_breaking_a_promise(
    fleet: list[VehicleSnapshot], interval: int, hold: int
) -> None:
    flex = fleet_flexibility(fleet, start=NOW, intervals=12, interval_s=interval, hold_s=hold, per_vehicle=True)
    detail = flex.per_vehicle
    assert detail is not None
    for row, v in enumerate(fleet):
        charge_w = math.floor(v.max_charge_w * float(charge_derate(v.temperature_c)))
        discharge_w = math.floor(v.max_discharge_w * float(discharge_derate(v.temperature_c)))
        left = (v.departure - NOW).total_seconds() if v.departure else math.inf
        for k in range(12):
            t_k = k * interval
            if not detail.available[row, k]:
                assert detail.up_w[row, k] == 0
                assert detail.down_w[row, k] == 0
                continue
            assert t_k + hold <= left  # plugged in for the whole hold
            # the baseline state at t_k: charge on arrival at full (derated) power up to the target
            soc = min(v.soc_wh + charge_w * v.charge_efficiency * min(t_k, left) / 3600, max(v.soc_wh, v.target_wh))
            low, high = int(detail.min_w[row, k]), int(detail.max_w[row, k])
            assert -discharge_w <= low <= high <= charge_w
            hours = hold / 3600
            after_low = soc + (low * v.charge_efficiency if low >= 0 else low / v.discharge_efficiency) * hours
            if soc >= v.floor_wh:
                assert after_low >= v.floor_wh - 1e-6
            if v.departure is not None and v.target_wh > 0:
                reach = after_low + charge_w * v.charge_efficiency * max(left - t_k - hold, 0) / 3600
                reachable_before = soc + charge_w * v.charge_efficiency * (left - t_k) / 3600 >= v.target_wh
                assert reach >= v.target_wh - 1e-6 or not reachable_before
            assert soc + max(high, 0) * v.charge_efficiency * hours <= v.capacity_wh + hours
    # and the fleet figures are the sums of the vehicles', per node and in total
    assert flex.total.up_w.tolist() == detail.up_w.sum(axis=0).tolist()
    assert sum(env.down_w.sum() for env in flex.by_node.values()) == detail.down_w.sum()
