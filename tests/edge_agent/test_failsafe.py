"""The fail-safe on CSMS link loss, timed on a simulated clock injected into the station's loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import SimClock
from edge_agent.control import Command
from edge_agent.failsafe import LinkMonitor, SafeMode
from edge_agent.frequency import SimulatedFrequency
from edge_agent.hardware.sim import SimulatedHardware
from edge_agent.station import Station, StationParams
from tests.edge_agent.helpers import profile, sim_station, tick_for

TICK = 0.1


async def _discharging_station(tmp_path: Path) -> tuple:
    st, clock, hw, grid = sim_station(tmp_path, tick_s=TICK)
    st.link.up(0.0)
    st.profiles.install(profile(mode="CentralSetpoint", setpoint=-8_000.0), 1, clock.wall())
    await tick_for(st, clock, 1.0)
    assert hw.power_w == pytest.approx(-8_000.0, abs=1.0)
    return st, clock, hw, grid


def _first(trace: list, pred) -> float:
    return next(t for t, cmd in trace if pred(cmd))


async def test_it_stops_discharging_within_2_s_plus_one_tick_of_losing_the_link(tmp_path: Path) -> None:
    # given a station discharging 8 kW, connected
    st, clock, _hw, _ = await _discharging_station(tmp_path)
    # when the WebSocket closes between two ticks
    clock.advance(0.03)
    t_lost = clock.monotonic()
    st.link.down(t_lost)
    trace = await tick_for(st, clock, 3.0, TICK)
    # then it keeps going for the 2 s grace, and stops discharging no later than 2 s + one tick
    stopped = _first(trace, lambda c: c.power_w >= 0.0)
    assert 2.0 < stopped - t_lost <= 2.0 + TICK + 1e-9
    assert all(cmd.power_w < 0 for t, cmd in trace if t - t_lost <= 2.0)
    assert st.in_failsafe


async def test_it_falls_back_to_the_safe_mode_the_csms_configured(tmp_path: Path) -> None:
    st, clock, hw, _ = await _discharging_station(tmp_path)
    # the CSMS chose "charge at most 3 kW" as the safe mode
    for name, value in (("FailSafeMode", "ChargingOnly"), ("FailSafeChargeLimit", "3000")):
        result = st.dm.set_variable(
            {"component": {"name": "EdgeAgentCtrlr"}, "variable": {"name": name}, "attribute_value": value}
        )
        assert result["attribute_status"] == "Accepted"
    st.link.down(clock.monotonic())
    await tick_for(st, clock, 4.0)
    assert hw.power_w == pytest.approx(3_000.0, abs=1.0)
    # and Idle means no power at all
    st.dm.set_variable(
        {"component": {"name": "EdgeAgentCtrlr"}, "variable": {"name": "FailSafeMode"}, "attribute_value": "Idle"}
    )
    await tick_for(st, clock, 1.0)
    assert hw.power_w == 0.0


async def test_a_half_open_link_counts_from_the_unanswered_request(tmp_path: Path) -> None:
    st, clock, _hw, _ = await _discharging_station(tmp_path)
    t_sent = clock.monotonic()
    st.link.request_sent(t_sent)  # never answered, socket still "open"
    trace = await tick_for(st, clock, 3.0, TICK)
    stopped = _first(trace, lambda c: c.power_w >= 0.0)
    assert 2.0 < stopped - t_sent <= 2.0 + TICK + 1e-9


async def test_it_resumes_the_profile_when_the_link_is_back(tmp_path: Path) -> None:
    st, clock, hw, _ = await _discharging_station(tmp_path)
    st.link.down(clock.monotonic())
    await tick_for(st, clock, 3.0)
    assert not hw.power_w < 0
    st.link.up(clock.monotonic())
    await tick_for(st, clock, 1.5)
    assert not st.in_failsafe
    assert hw.power_w == pytest.approx(-8_000.0, abs=1.0)


async def test_local_protection_keeps_working_in_failsafe(tmp_path: Path) -> None:
    st, clock, hw, grid = await _discharging_station(tmp_path)
    st.link.down(clock.monotonic())
    await tick_for(st, clock, 3.0)
    assert st.in_failsafe
    assert hw.energized
    grid.faults.frequency_hz = 0.0
    await tick_for(st, clock, 0.3)
    assert not hw.energized


def test_link_monitor_is_down_until_first_connected() -> None:
    link = LinkMonitor(timeout_s=2.0)
    assert link.failsafe(2.5)  # never connected since t = 0
    link.up(3.0)
    assert not link.failsafe(10.0)
    link.down(10.0)
    link.down(11.0)  # a second notice does not restart the grace period
    assert link.failsafe(12.01)


def test_a_freshly_started_station_gets_the_grace_period_before_the_failsafe(tmp_path: Path) -> None:
    # given a station created at t = 1000 s on a monotonic clock far from zero (like the real one), never connected
    clock = SimClock(t0=1_000.0)
    grid = SimulatedFrequency(sigma_hz=0.0)
    st = Station(
        StationParams(station_id="fresh"),
        clock=clock,
        hardware=SimulatedHardware(clock=clock, grid=grid),
        grid=grid,
        outbox=Outbox(OutboxStore(tmp_path / "fresh.sqlite3"), "fresh"),
    )
    # then the fail-safe waits its 2 s from start-up, not from the clock's origin
    assert not st.link.failsafe(1_001.9)
    assert st.link.failsafe(1_002.1)


def test_the_round_trip_peak_counts_a_request_still_waiting_and_restarts_once_taken() -> None:
    # Given a link with one answered request (0.3 s) and one sent 1.2 s ago that is still unanswered
    link = LinkMonitor(timeout_s=2.0)
    link.up(0.0)
    link.request_sent(1.0)
    link.answer_received(1.3)
    link.request_sent(2.0)
    # When the peak is taken, then the waiting request counts as long as it has waited
    assert link.rtt_peak_take(3.2) == pytest.approx(1.2)
    # And once answered (0.1 s later) the next peak is that answer's round trip, not the old peak
    link.answer_received(3.3)
    assert link.rtt_peak_take(4.0) == pytest.approx(1.3)
    assert link.rtt_peak_take(5.0) == 0.0


def test_a_lead_makes_the_failsafe_engage_that_much_earlier_but_never_within_a_round_trip() -> None:
    # given a link lost at t = 10 s, a 2 s LinkLossTimeout and a 0.5 s round-trip limit
    link = LinkMonitor(timeout_s=2.0, round_trip_limit_s=0.5)
    link.up(0.0)
    link.down(10.0)
    # when the power stage needs 0.6 s to hear of the fail-safe (an ISO 15118 car: two 0.3 s charge loops)
    link.lead_s = 0.6
    # then the fail-safe engages after 2 - 0.6 = 1.4 s of loss, so the car is safe by 2 s
    assert not link.failsafe(11.39)
    assert link.failsafe(11.41)
    # and a lead longer than the timeout still leaves a link quiet for less than 0.5 s alone
    link.lead_s = 5.0
    assert not link.failsafe(10.49)
    assert link.failsafe(10.51)


def test_the_car_is_told_the_safe_mode_as_soon_as_the_link_counts_as_lost_not_a_tick_later(tmp_path: Path) -> None:
    # given a station discharging 8 kW whose link was lost 2.05 s ago, with no tick since the loss (fail-safe Idle)
    st, clock, _hw, _ = sim_station(tmp_path, tick_s=TICK, safe_mode=SafeMode(mode="Idle"))
    st.link.up(0.0)
    st.last_command = Command(power_w=-8_000.0)
    st.link.down(clock.monotonic())
    clock.advance(2.05)
    assert not st.in_failsafe  # the loop has not run yet
    # when the car's charge loop asks for its target, then it is told 0 W at once
    assert st.car_target_w(clock.monotonic()) == 0.0
    # and with ChargingOnly (at most 3 kW) a discharge becomes 0 W and a 10 kW charge becomes 3 kW
    st.safe_mode = SafeMode(mode="ChargingOnly", charge_limit_w=3_000.0)
    assert st.car_target_w(clock.monotonic()) == 0.0
    st.last_command = Command(power_w=10_000.0)
    assert st.car_target_w(clock.monotonic()) == 3_000.0
    # while the link is up the command passes unchanged
    st.link.up(clock.monotonic())
    assert st.car_target_w(clock.monotonic()) == 10_000.0
