"""Closed-loop numerics: response gains, allocation by expected delivery, the fleet correction.

Safety is a property over random fleets *and* arbitrary gains: the commands stay inside every vehicle's bounds
(mobility floor, power limits, departure need) whatever the gains say. Convergence is checked on a simulated car with
a fixed efficiency and the meter noise of the edge simulator.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.numerics.allocation import allocate
from fleet.numerics.arrays import FleetArrays, power_bounds
from fleet.numerics.response import (
    GAIN_MAX,
    GAIN_MIN,
    TrackingSettings,
    correction_clip,
    correction_step,
    gain_estimate,
    gain_prior,
    gain_update,
    usable,
)
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.numerics.thermal import discharge_derate
from tests.fleet.numerics.strategies import NOW, car, fleets

ANY_GAIN = st.one_of(st.floats(0.01, 20.0), st.sampled_from([0.0, -1.0, math.nan, math.inf, GAIN_MIN, GAIN_MAX, 1.0]))


def _meter(rng: random.Random, power_w: float) -> float:
    """The edge simulator's meter: 0.2 % of reading + 5 W, Gaussian."""
    return power_w + rng.gauss(0.0, 0.002 * abs(power_w) + 5.0)


@settings(max_examples=300, deadline=None)
@given(
    fleet=fleets(),
    request_w=st.integers(-400_000, 400_000),
    duration_s=st.sampled_from([2, 60, 900]),
    data=st.data(),
)
def test_it_keeps_every_command_within_floor_and_limits_whatever_the_gains(
    fleet: list[VehicleSnapshot], request_w: int, duration_s: int, data: st.DataObject
) -> None:
    # given random gains, sane or not
    gains = data.draw(st.lists(ANY_GAIN, min_size=len(fleet), max_size=len(fleet)))
    # when a setpoint is allocated by expected delivery
    result = allocate(fleet, request_w, now=NOW, duration_s=duration_s, gain=np.array(gains))
    bounds = power_bounds(FleetArrays.from_snapshots(fleet), now=NOW, duration_s=duration_s)
    for v, p, lo, hi in zip(fleet, result.power_w.tolist(), bounds.lo, bounds.hi, strict=True):
        # then every command lies within the vehicle's bounds ...
        assert lo <= p <= hi
        # ... so it never discharges beyond the derated limit nor below the mobility floor
        if p < 0:
            assert -p <= math.floor(v.max_discharge_w * float(discharge_derate(v.temperature_c)))
            hold: float = duration_s
            if v.departure is not None and 0 < (left := (v.departure - NOW).total_seconds()) < duration_s:
                hold = max(left, 1.0)
            assert v.soc_wh + p / v.discharge_efficiency * hold / 3600.0 >= v.floor_wh - 1e-6
        assert p <= v.max_charge_w
    # and the commands are whole watts
    assert result.power_w.dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(fleet=fleets(), fraction=st.floats(0.0, 1.0), data=st.data())
def test_it_meets_the_request_in_expected_delivery_when_feasible(
    fleet: list[VehicleSnapshot], fraction: float, data: st.DataObject
) -> None:
    # given gains within the estimator's range and a request inside the fleet's expected range
    gains = np.array(data.draw(st.lists(st.floats(0.0, GAIN_MAX), min_size=len(fleet), max_size=len(fleet))))
    probe = allocate(fleet, 0, now=NOW, duration_s=60, gain=gains)
    request = round(probe.min_w + fraction * (probe.max_w - probe.min_w))
    # when it is allocated
    result = allocate(fleet, request, now=NOW, duration_s=60, gain=gains)
    # then the expected delivery sum(g p) meets it to within the rounding of whole-watt commands
    assert result.feasible
    assert abs(float((gains * result.power_w).sum()) - request) <= 1.5 * len(fleet) + 1
    assert result.expected_w == round(float((gains * result.power_w).sum()))


@settings(max_examples=100, deadline=None)
@given(fleet=fleets(), request_w=st.integers(-300_000, 300_000))
def test_it_allocates_as_before_when_every_gain_is_one(fleet: list[VehicleSnapshot], request_w: int) -> None:
    # when gains are all 1
    with_gain = allocate(fleet, request_w, now=NOW, duration_s=60, gain=np.ones(len(fleet)))
    without = allocate(fleet, request_w, now=NOW, duration_s=60)
    # then the commands are those of the open-loop allocation
    assert with_gain.power_w.tolist() == without.power_w.tolist()
    assert (with_gain.min_w, with_gain.max_w, with_gain.feasible) == (without.min_w, without.max_w, without.feasible)


def test_it_asks_more_of_a_car_that_delivers_less() -> None:
    # given two identical cars, one delivering 80 % of its command
    fleet = [car(1), car(2)]
    # when 10 kW of discharge is asked
    result = allocate(fleet, -10_000, now=NOW, duration_s=60, gain=np.array([0.8, 1.0]))
    p = result.power_w.tolist()
    # then both deliver the same share (wear balance holds in delivered power) and the fleet delivers 10 kW
    assert 0.8 * p[0] == pytest.approx(p[1], abs=2)
    assert 0.8 * p[0] + p[1] == pytest.approx(-10_000, abs=2)
    # and a car over-delivering is never planned past its limit: its expected range stays within its bounds
    full = allocate(fleet, -100_000, now=NOW, duration_s=60, gain=np.array([1.25, 1.0]))
    assert full.power_w.tolist() == [-8_000, -10_000]
    assert (full.min_w, full.feasible) == (-20_000, False)


def test_a_car_that_delivers_nothing_is_still_commanded_and_the_others_carry_its_share() -> None:
    # given three identical cars, the first idle whatever it is told (its gain has fallen to 0)
    fleet = [car(1), car(2), car(3)]
    result = allocate(fleet, -9_000, now=NOW, duration_s=60, gain=np.array([0.0, 1.0, 1.0]))
    p = result.power_w.tolist()
    # then the two others deliver the whole request
    assert p[1] + p[2] == pytest.approx(-9_000, abs=1)
    assert result.expected_w == pytest.approx(-9_000, abs=1)
    # and the idle one is still asked twice its share (1/GAIN_MIN), so its response is measured again
    assert p[0] == pytest.approx(2 * p[1], abs=2)


def test_it_refuses_gains_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="gain has shape"):
        allocate([car(1)], 0, now=NOW, duration_s=60, gain=np.ones(2))


@settings(max_examples=60, deadline=None)
@given(efficiency=st.floats(0.0, 1.45), seed=st.integers(0, 2**31))
def test_it_learns_a_cars_fixed_efficiency(efficiency: float, seed: int) -> None:
    # given a car that delivers a fixed fraction of any command, read through a noisy meter
    rng = random.Random(seed)
    num, den = gain_prior(1)
    # when it follows 60 random regulation commands (2 minutes of 2-s updates)
    for _ in range(60):
        command = rng.choice((-1, 1)) * rng.uniform(1_500.0, 11_000.0)
        mask = usable([command], [-11_000.0], [11_000.0])
        num, den = gain_update(num, den, [command], [_meter(rng, efficiency * command)], mask)
    # then its gain is its efficiency to within half a percent
    assert gain_estimate(num, den)[0] == pytest.approx(efficiency, abs=0.005)


def test_it_bounds_the_gain_of_a_car_that_gives_too_much_and_learns_one_that_gives_little() -> None:
    num, den = gain_prior(2)
    for _ in range(100):
        num, den = gain_update(num, den, [5_000.0, 5_000.0], [500.0, 20_000.0], [True, True])
    assert gain_estimate(num, den).tolist() == [pytest.approx(0.1, abs=1e-4), GAIN_MAX]
    # a car answering the wrong way round counts as giving nothing, not a negative gain
    num, den = gain_prior(1)
    for _ in range(100):
        num, den = gain_update(num, den, [5_000.0], [-5_000.0], [True])
    assert gain_estimate(num, den)[0] == pytest.approx(0.0, abs=1e-4)


def test_it_starts_from_one_and_learns_only_from_usable_samples() -> None:
    num, den = gain_prior(3)
    assert gain_estimate(num, den).tolist() == [1.0, 1.0, 1.0]
    # at a bound (within the margin), too small to read through the noise, or normal
    commands, lows, highs = [-7_400.0, 300.0, 4_000.0], [-7_400.0, -7_400.0, -7_400.0], [7_400.0] * 3
    mask = usable(commands, lows, highs)
    assert mask.tolist() == [False, False, True]
    for _ in range(50):
        num, den = gain_update(num, den, commands, [-3_000.0, 100.0, 3_600.0], mask)
    assert gain_estimate(num, den).tolist() == [1.0, 1.0, pytest.approx(0.9, abs=1e-4)]
    # a non-finite measurement teaches nothing
    before = gain_estimate(num, den)
    num, den = gain_update(num, den, [4_000.0], [math.nan], [True])
    assert gain_estimate(num[:1], den[:1])[0] == before[0]


@settings(max_examples=200, deadline=None)
@given(
    residual=st.floats(-50_000, 50_000),
    rate=st.floats(0.05, 1.9),
    bound=st.floats(0.0, 40_000),
    start=st.floats(-40_000, 40_000),
)
def test_the_fleet_correction_settles_on_the_residual_within_its_bound(
    residual: float, rate: float, bound: float, start: float
) -> None:
    # given a fleet whose cars deliver `residual` W more than their gains predict, whatever the commands
    s = TrackingSettings(rate=rate)
    correction = max(min(start, bound), -bound)
    request = 100_000.0
    for _ in range(400):
        # each dispatch: the allocation meets request + correction in expected delivery
        correction = correction_step(
            correction,
            requested_w=request,
            expected_w=request + correction,
            residual_w=residual,
            bound_w=bound,
            settings=s,
        )
        # then it never leaves its bound
        assert -bound - 1e-9 <= correction <= bound + 1e-9
    # and it ends up cancelling the residual as far as the bound allows
    assert correction == pytest.approx(max(min(-residual, bound), -bound), abs=1e-3 * max(1.0, abs(residual)))


def test_the_fleet_correction_does_not_wind_up_against_a_saturated_fleet() -> None:
    # a setpoint already at the fleet's maximum: no correction may push it further
    assert correction_clip(5_000.0, setpoint_w=100_000, min_w=-50_000, max_w=100_000) == 0.0
    # beyond it, the correction may only pull back
    assert correction_clip(5_000.0, setpoint_w=120_000, min_w=-50_000, max_w=100_000) == 0.0
    assert correction_clip(-30_000.0, setpoint_w=120_000, min_w=-50_000, max_w=100_000) == -30_000.0
    # inside, it keeps the corrected setpoint within range
    assert correction_clip(8_000.0, setpoint_w=95_000, min_w=-50_000, max_w=100_000) == 5_000.0
    assert correction_clip(-8_000.0, setpoint_w=95_000, min_w=-50_000, max_w=100_000) == -8_000.0
    # a non-finite error leaves the correction as it was
    assert correction_step(1_000.0, requested_w=0, expected_w=0, residual_w=math.nan, bound_w=5_000) == 1_000.0


def test_it_refuses_settings_that_cannot_converge() -> None:
    with pytest.raises(ValueError, match="rate"):
        TrackingSettings(rate=2.0)
    with pytest.raises(ValueError, match="alpha"):
        TrackingSettings(alpha=0.0)
