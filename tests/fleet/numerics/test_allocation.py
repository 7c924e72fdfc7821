"""Allocation of a fleet setpoint: safety properties over random fleets, plus hand-computed cases."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.numerics.allocation import allocate
from fleet.numerics.arrays import FleetArrays
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.numerics.thermal import charge_derate, discharge_derate
from tests.fleet.numerics.strategies import NOW, car, fleets

TOL_WH = 1e-6
EPS_WH = 1e-9  # a bound met to within float rounding counts as binding


def _hold_s(v: VehicleSnapshot, duration_s: float) -> float:
    """The time a vehicle is plugged in during the interval (the spec: a car leaving mid-interval counts until then)."""
    if v.departure is None:
        return duration_s
    left = (v.departure - NOW).total_seconds()
    return max(left, 1.0) if 0 < left < duration_s else duration_s


def _soc_after(v: VehicleSnapshot, p: int, hold_s: float) -> float:
    hours = hold_s / 3600.0
    return v.soc_wh + (p * v.charge_efficiency * hours if p >= 0 else p / v.discharge_efficiency * hours)


def _charge_limit(v: VehicleSnapshot) -> int:
    return math.floor(v.max_charge_w * float(charge_derate(v.temperature_c)))


def _discharge_limit(v: VehicleSnapshot) -> int:
    return math.floor(v.max_discharge_w * float(discharge_derate(v.temperature_c)))


def _target_reachable(v: VehicleSnapshot, soc: float, elapsed_s: float) -> bool:
    if v.departure is None or v.target_wh <= 0:
        return True
    left = max((v.departure - NOW).total_seconds() - elapsed_s, 0.0)
    target = min(v.target_wh, v.capacity_wh)
    return soc + _charge_limit(v) * v.charge_efficiency * left / 3600.0 >= target - TOL_WH


@settings(max_examples=300, deadline=None)
@given(fleet=fleets(), request_w=st.integers(-400_000, 400_000), duration_s=st.sampled_from([2, 60, 900, 3600]))
def test_allocation_is_always_safe_and_exact_when_feasible(
    fleet: list[VehicleSnapshot], request_w: int, duration_s: int
) -> None:
    # when a random setpoint is allocated over a random fleet
    result = allocate(fleet, request_w, now=NOW, duration_s=duration_s)
    # then every vehicle stays within its limits, its floor and its departure need
    for v, p in zip(fleet, result.power_w.tolist(), strict=True):
        hold = _hold_s(v, duration_s)
        soc = _soc_after(v, p, hold)
        assert -_discharge_limit(v) <= p <= _charge_limit(v), (v, p)
        if v.soc_wh >= v.floor_wh:
            assert soc >= v.floor_wh - TOL_WH, (v, p)
        else:
            assert p >= 0, (v, p)
        if _target_reachable(v, v.soc_wh, 0.0):
            assert _target_reachable(v, soc, hold), (v, p)
            assert v.vehicle_id not in result.short_vehicle_ids
        else:
            assert p >= 0
        assert soc <= v.capacity_wh + hold / 3600.0  # at most one watt of rounding over a full pack
    # and the total is exact when feasible, else the nearest feasible total with a reason
    assert result.achieved_w == int(result.power_w.sum())
    if result.min_w <= request_w <= result.max_w:
        assert result.feasible
        assert result.achieved_w == request_w
    else:
        assert not result.feasible
        assert result.reason
        assert result.achieved_w == (result.max_w if request_w > result.max_w else result.min_w)


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), duration_s=st.sampled_from([60, 900]))
def test_an_infeasible_request_gets_the_most_each_vehicle_can_give(
    fleet: list[VehicleSnapshot], duration_s: int
) -> None:
    # when far more charge and far more discharge than the fleet can take are requested
    up = allocate(fleet, 10**9, now=NOW, duration_s=duration_s)
    down = allocate(fleet, -(10**9), now=NOW, duration_s=duration_s)
    for v, p_up, p_down in zip(fleet, up.power_w.tolist(), down.power_w.tolist(), strict=True):
        hold = _hold_s(v, duration_s)
        # then one more watt of charge would break a power or capacity limit
        assert p_up + 1 > _charge_limit(v) or _soc_after(v, p_up + 1, hold) > v.capacity_wh - EPS_WH, (v, p_up)
        # and one more watt of discharge would break a power limit, the floor or the departure need
        more = p_down - 1
        soc = _soc_after(v, more, hold)
        broken = (
            more < -_discharge_limit(v)
            or (v.soc_wh >= v.floor_wh and soc < v.floor_wh + EPS_WH)
            or (v.soc_wh < v.floor_wh and more < 0)
            or not _target_reachable(v, soc - 2 * TOL_WH, hold)
            or v.vehicle_id in down.short_vehicle_ids
        )
        assert broken, (v, p_down)
    assert not up.feasible
    assert "maximum" in (up.reason or "")
    assert not down.feasible
    assert "minimum" in (down.reason or "")


def test_identical_cars_share_equally() -> None:
    # given two identical cars; when 10 kW of charge is requested
    result = allocate([car(1), car(2)], 10_000, now=NOW)
    # then each takes 5 kW
    assert result.as_dict() == {1: 5_000, 2: 5_000}
    assert result.feasible
    assert result.reason is None


def test_discharge_stops_at_the_mobility_floor() -> None:
    # given a car 1 kWh above its floor (lossless): over 15 min it can give at most 4 kW
    low = car(1, soc_wh=13_000)
    result = allocate([low, car(2)], -12_000, now=NOW, duration_s=900)
    # then it gives at most 4 kW and the other car covers the rest
    assert result.as_dict()[1] >= -4_000
    assert result.achieved_w == -12_000


def test_a_car_below_its_floor_is_never_discharged() -> None:
    result = allocate([car(1, soc_wh=5_000)], -5_000, now=NOW)
    assert result.as_dict() == {1: 0}
    assert not result.feasible


def test_departure_need_blocks_discharge_and_forces_charge() -> None:
    # given 40 kWh stored, 50 kWh wanted, 10 kW charger, lossless
    relaxed = car(1, soc_wh=40_000, target_wh=50_000, departure=NOW + timedelta(hours=1, minutes=15))
    urgent = car(2, soc_wh=40_000, target_wh=50_000, departure=NOW + timedelta(hours=1))
    # when discharge is requested for 15 min
    result = allocate([relaxed, urgent], -20_000, now=NOW, duration_s=900)
    # then the relaxed car (exactly 1 h of charging left afterwards) gives nothing
    # and the urgent one must charge: 42.5 kWh needed after the interval => 10 kW now
    assert result.as_dict() == {1: 0, 2: 10_000}
    assert result.min_w == 10_000
    assert not result.feasible


def test_a_car_that_cannot_make_its_departure_is_charged_flat_out_and_reported() -> None:
    stranded = car(7, soc_wh=20_000, target_wh=50_000, departure=NOW + timedelta(hours=1))
    result = allocate([stranded, car(8)], 0, now=NOW)
    assert result.as_dict()[7] == 10_000
    assert result.short_vehicle_ids == (7,)
    assert "7" in (result.reason or "")


def test_a_hot_pack_is_derated() -> None:
    # given a pack at 50 °C: hot derating leaves (55 - 50) / 15 = 1/3 of the power
    result = allocate([car(1, temperature_c=50.0)], -10_000, now=NOW)
    assert result.as_dict() == {1: -3_333}


def test_wear_balancing_gives_less_to_worn_hot_or_busy_packs() -> None:
    fresh = car(1)
    worn = car(2, state_of_health=0.85)
    warm = car(3, temperature_c=38.0)
    busy = car(4, cycles_today=1.0)
    result = allocate([fresh, worn, warm, busy], -20_000, now=NOW).as_dict()
    assert result[1] < result[2] < 0
    assert result[1] < result[3] < 0
    assert result[1] < result[4] < 0
    assert sum(result.values()) == -20_000


def test_cycle_depth_is_spread_by_energy_room() -> None:
    # given two cars with 30 and 10 kWh above the floor; when 8 kW are discharged
    result = allocate([car(1, soc_wh=42_000), car(2, soc_wh=22_000)], -8_000, now=NOW).as_dict()
    # then both lose the same fraction of their room: 3:1
    assert result == {1: -6_000, 2: -2_000}


def test_it_is_deterministic_and_reuses_fleet_arrays() -> None:
    rng = np.random.default_rng(3)
    socs, temps = rng.integers(12_000, 60_000, 50).tolist(), rng.uniform(0, 45, 50).tolist()
    fleet = [car(i, soc_wh=soc, temperature_c=t) for i, (soc, t) in enumerate(zip(socs, temps, strict=True))]
    arrays = FleetArrays.from_snapshots(fleet)
    first = allocate(arrays, -123_457, now=NOW)
    second = allocate(fleet, -123_457, now=NOW)
    assert np.array_equal(first.power_w, second.power_w)
    assert first.achieved_w == -123_457


def test_an_empty_fleet_can_only_do_nothing() -> None:
    assert allocate([], 0, now=NOW).feasible
    result = allocate([], 1_000, now=NOW)
    assert not result.feasible
    assert result.achieved_w == 0


def test_advancing_the_arrays_moves_the_state_of_charge() -> None:
    arrays = FleetArrays.from_snapshots([car(1, charge_efficiency=0.9)])
    after = arrays.advance([10_000], 3600)
    assert after.soc_wh.tolist() == [39_000.0]
    assert arrays.soc_wh.tolist() == [30_000.0]


@settings(max_examples=100, deadline=None)
@given(fleet=fleets(min_size=2, max_size=40), fraction=st.floats(0.0, 1.0))
def test_the_newton_solution_matches_the_exact_breakpoint_solution(
    fleet: list[VehicleSnapshot], fraction: float
) -> None:
    from fleet.numerics.allocation import _waterfill_sorted, _waterfill_up, wear_balanced_weights
    from fleet.numerics.arrays import power_bounds

    arrays = FleetArrays.from_snapshots(fleet)
    bounds = power_bounds(arrays, now=NOW, duration_s=900)
    lo, hi = bounds.lo, bounds.hi
    start = float(np.clip(0.0, lo, hi).sum())
    target = start + fraction * (float(hi.sum()) - start)
    weights = np.maximum(wear_balanced_weights(arrays)[0], 1e-12)
    newton = np.clip(_waterfill_up(lo, hi, weights, target) * weights, lo, hi)
    exact = np.clip(_waterfill_sorted(lo, hi, weights, target) * weights, lo, hi)
    assert abs(newton.sum() - target) < 0.5
    assert np.allclose(newton, exact, atol=1.0)
