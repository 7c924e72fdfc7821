"""The local control law against hand-computed points, and the mobility floor as a property."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.clock import SimClock
from edge_agent.control import (
    BatteryState,
    Curve,
    Departure,
    DroopSettings,
    Limits,
    LookAheadFilter,
    Setpoints,
    control_step,
    droop_delta_w,
)
from edge_agent.hardware.sim import SimulatedCar, SimulatedHardware

DROOP = DroopSettings()
LIM = Limits()  # 11 kW both ways, ramp 22 kW/s, floor 20 %, efficiencies 0.95
BAT = BatteryState(soc=0.6, capacity_wh=60_000.0)
NO_DEP = Departure()


@pytest.mark.parametrize(
    ("f_hz", "expected_w"),
    [
        (60.0, 0.0),
        (60.036, 0.0),  # at the deadband edge
        (59.97, 0.0),  # inside the deadband
        (60.336, 1_100.0),  # (0.336 - 0.036) / (60 * 0.05) * 11 kW = 0.1 * 11 kW
        (59.664, -1_100.0),  # mirror image: discharge 1.1 kW more
        (61.536, 5_500.0),  # (1.5 / 3) * 11 kW
    ],
)
def test_ieee1547_droop_matches_hand_computed_points(f_hz: float, expected_w: float) -> None:
    assert droop_delta_w(f_hz, DROOP, 11_000.0) == pytest.approx(expected_w, abs=1e-6)


def test_central_setpoint_adds_the_droop_response() -> None:
    # given a 5 kW discharge setpoint and 59.9 Hz: 0.064 Hz beyond the deadband -> 0.064 / 3 * 11 kW = 234.67 W more
    sp = Setpoints(mode="CentralSetpoint", setpoint_w=-5_000.0)
    # when
    cmd = control_step(59.9, -5_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1)
    # then
    assert cmd.power_w == pytest.approx(-5_234.667, abs=0.01)
    assert cmd.bound == ""


def test_local_frequency_follows_the_csms_curve_on_top_of_the_baseline() -> None:
    curve = Curve.from_points([(59.9, -11_000.0), (60.0, 0.0), (60.1, 11_000.0)])
    sp = Setpoints(mode="LocalFrequency", baseline_w=1_000.0, freq_watt_curve=curve)
    cmd = control_step(59.95, -4_500.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1)
    assert cmd.power_w == pytest.approx(1_000.0 - 5_500.0)
    # held flat beyond the last point
    assert control_step(60.5, 11_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1).power_w == pytest.approx(11_000.0)


def test_charging_only_lowers_charging_on_under_frequency_but_never_discharges() -> None:
    sp = Setpoints(mode="ChargingOnly", limit_w=7_000.0)
    assert control_step(59.664, 7_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1).power_w == pytest.approx(5_900.0)
    assert control_step(57.0, 0.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1).power_w == 0.0
    assert control_step(60.5, 7_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1).power_w == pytest.approx(7_000.0)


def test_idle_commands_zero() -> None:
    assert control_step(59.5, 0.0, Setpoints(mode="Idle"), DROOP, LIM, BAT, NO_DEP, 0.1).power_w == 0.0


def test_afrr_signal_maps_through_the_signal_watt_curve() -> None:
    sp = Setpoints(
        mode="CentralSetpoint",
        setpoint_w=0.0,
        signal_watt_curve=Curve.from_points([(-100, -10_000.0), (100, 10_000.0)]),
        afrr_signal=50,
    )
    assert control_step(60.0, 5_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1).power_w == pytest.approx(5_000.0)


def test_ramp_limit_caps_the_step() -> None:
    # 22 kW/s over 0.1 s = 2.2 kW per step
    sp = Setpoints(mode="ChargingOnly")
    cmd = control_step(60.0, 0.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1)
    assert cmd.power_w == pytest.approx(2_200.0)
    assert cmd.bound == "ramp"


def test_mobility_floor_limits_discharge_to_the_energy_left_above_it() -> None:
    # 0.6 Wh above the floor (60 kWh pack at 20.001 %), 1 s step: |p| <= 0.6 Wh * 0.95 * 3600 s/h = 2052 W
    bat = BatteryState(soc=0.20001, capacity_wh=60_000.0)
    sp = Setpoints(mode="CentralSetpoint", setpoint_w=-11_000.0)
    cmd = control_step(60.0, -2_000.0, sp, DROOP, LIM, bat, NO_DEP, 1.0)
    assert cmd.power_w == pytest.approx(-2_052.0, abs=0.5)
    assert cmd.bound == "floor"
    at_floor = BatteryState(soc=0.20, capacity_wh=60_000.0)
    assert control_step(60.0, -2_000.0, sp, DROOP, LIM, at_floor, NO_DEP, 1.0).power_w == 0.0


def test_departure_target_forces_charging_when_slack_runs_out() -> None:
    # 18 kWh needed (50 % -> 80 % of 60 kWh); after this 1 s step 6200 s remain: 6200/3600 h * 11 kW * 0.95 =
    # 17,997.22 Wh, 2.78 Wh short -> charge at least 2.78 Wh * 3600 / 0.95 = 10,526.3 W now.
    bat = BatteryState(soc=0.5, capacity_wh=60_000.0)
    dep = Departure(seconds_left=6_201.0, target_soc=0.8)
    sp = Setpoints(mode="CentralSetpoint", setpoint_w=-5_000.0)
    cmd = control_step(60.0, 10_000.0, sp, DROOP, LIM, bat, dep, 1.0)
    assert cmd.power_w == pytest.approx(10_526.3, abs=0.1)
    assert cmd.bound == "departure"


def test_thermal_derating_halves_power_halfway_between_start_and_max() -> None:
    bat = BatteryState(soc=0.6, capacity_wh=60_000.0, inverter_temp_c=77.5)  # derates 70 -> 85 C
    sp = Setpoints(mode="CentralSetpoint", setpoint_w=-11_000.0)
    cmd = control_step(60.0, -5_500.0, sp, DROOP, LIM, bat, NO_DEP, 0.1)
    assert cmd.power_w == pytest.approx(-5_500.0)
    assert cmd.bound == "thermal"


def test_failsafe_forbids_discharge_and_beats_the_ramp() -> None:
    sp = Setpoints(mode="CentralSetpoint", setpoint_w=-11_000.0)
    cmd = control_step(60.0, -11_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1, allow_discharge=False)
    assert cmd.power_w == 0.0
    assert cmd.bound == "failsafe"


def test_trip_ceases_to_energise_at_once() -> None:
    sp = Setpoints(mode="CentralSetpoint", setpoint_w=-11_000.0)
    cmd = control_step(60.0, -11_000.0, sp, DROOP, LIM, BAT, NO_DEP, 0.1, energize=False)
    assert (cmd.power_w, cmd.energize) == (0.0, False)


def test_curves_refuse_bad_points() -> None:
    with pytest.raises(ValueError, match="1 to 20"):
        Curve.from_points([])
    with pytest.raises(ValueError, match="distinct"):
        Curve.from_points([(60.0, 0.0), (60.0, 1.0)])


def test_lookahead_filter_follows_a_ramp_without_lag() -> None:
    filt = LookAheadFilter(size=5)
    out = [filt.push(i * 0.1, 60.0 + 0.01 * i * 0.1) for i in range(50)]
    for i in range(5, 50):
        assert out[i] == pytest.approx(60.0 + 0.01 * i * 0.1, abs=1e-9)


def test_lookahead_filter_reduces_noise_and_does_not_overshoot_a_step() -> None:
    rng = random.Random(7)
    filt = LookAheadFilter(size=5)
    raw = [60.0 + rng.gauss(0, 0.005) for _ in range(20_000)]
    smoothed = [filt.push(i * 0.1, f) for i, f in enumerate(raw)]

    def var(xs: list[float]) -> float:
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)

    assert var(smoothed[10:]) < 0.75 * var(raw[10:])
    step = LookAheadFilter(size=5)
    outs = [step.push(i * 0.1, 60.0 if i < 10 else 60.2) for i in range(20)]
    assert max(outs) <= 60.2 + 1e-12


@settings(max_examples=150, deadline=None)
@given(
    soc0=st.floats(min_value=0.2, max_value=0.45),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["CentralSetpoint", "LocalFrequency", "ChargingOnly", "Idle"]),
            st.floats(min_value=-50_000.0, max_value=20_000.0),
            st.floats(min_value=58.0, max_value=62.0),
            st.floats(min_value=0.05, max_value=2.0),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_the_mobility_floor_is_never_crossed(soc0: float, steps: list[tuple[str, float, float, float]]) -> None:
    # given a simulated car near its floor and any sequence of modes, setpoints, frequencies and step lengths
    clock = SimClock()
    car = SimulatedCar(capacity_wh=40_000.0, soc=soc0, max_discharge_w=50_000.0)
    hw = SimulatedHardware(clock=clock, car=car, inverter_slew_w_per_s=1e9, meter_noise_rel=0.0, seed=1)
    lim = Limits(max_discharge_w=50_000.0, max_charge_w=20_000.0, ramp_w_per_s=1e9)
    curve = Curve.from_points([(59.0, -50_000.0), (61.0, 20_000.0)])
    prev = 0.0
    hw.read_now()
    for mode, setpoint, f_hz, dt in steps:
        m = hw.read_now()
        sp = Setpoints(mode=mode, setpoint_w=setpoint, baseline_w=setpoint, freq_watt_curve=curve)
        bat = BatteryState(soc=m.soc, capacity_wh=car.capacity_wh)
        # when the loop commands the inverter and the physics runs for that step
        cmd = control_step(f_hz, prev, sp, DROOP, lim, bat, NO_DEP, dt)
        hw.apply_now(cmd.power_w, cmd.energize)
        clock.advance(dt)
        hw.read_now()
        prev = cmd.power_w
        # then the pack never goes below the floor
        assert car.soc >= lim.floor_soc - 1e-12
