"""IEEE 1547 trips, anti-islanding and enter service, timed on a simulated clock."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from edge_agent.protection import IslandingSettings, Protection, ProtectionState, Quantity, TripSetting
from tests.edge_agent.helpers import profile, sim_station, tick_for

TICK = 0.1


def run(prot: Protection, t0: float, seconds: float, f: float, v: float = 1.0, locked: bool = True) -> float | None:
    """Feed constant samples every TICK from t0; return the time of the trip, if any."""
    t = t0
    while t <= t0 + seconds + 1e-9:
        if prot.update(t, f, v, locked).event == "trip":
            return t
        t += TICK
    return None


@pytest.mark.parametrize(
    ("f_hz", "v_pu", "locked", "limit_s", "name"),
    [
        (0.0, 1.0, True, 0.16, "UF2"),  # dead grid: under-frequency 2 clears first
        (62.5, 1.0, True, 0.16, "OF2"),
        (60.0, 1.25, True, 0.16, "OV2"),
        (60.0, 0.3, True, 0.16, "UV2"),
        (60.0, 1.0, False, 1.0, "ANTI_ISLANDING"),  # PLL lost lock with healthy-looking readings
        (60.0, 1.12, True, 2.0, "OV1"),
        (61.5, 1.0, True, 300.0, "OF1"),
    ],
)
def test_it_trips_within_the_clearing_time(f_hz: float, v_pu: float, locked: bool, limit_s: float, name: str) -> None:
    # given a healthy grid at t = 0, then an abnormal condition from t = 10 s (a step: ROCOF and vector shift would
    # see it at once, so they are set out of reach here to time the must-trip stage alone)
    prot = Protection(sample_period_s=TICK, islanding=IslandingSettings(math.inf, 0.5, math.inf))
    assert run(prot, 0.0, 9.9, 60.0) is None
    # when the condition persists
    tripped_at = run(prot, 10.0, limit_s + 1.0, f_hz, v_pu, locked)
    # then the inverter ceased to energise no later than the clearing time (and not absurdly early)
    assert tripped_at is not None
    assert 10.0 + limit_s - 2 * TICK - 1e-9 <= tripped_at <= 10.0 + limit_s - TICK + 1e-9
    assert prot.tripped_by == name
    assert prot.state is ProtectionState.TRIPPED


def test_anti_islanding_never_takes_longer_than_two_seconds() -> None:
    with pytest.raises(ValueError, match="2 s"):
        Protection(islanding_clearing_s=2.5)


def test_it_rides_through_a_short_excursion() -> None:
    # sampled every 20 ms, a 60 ms excursion above OF2 (62 Hz, 0.16 s) is ridden through
    prot = Protection(sample_period_s=0.02)
    for i in range(3):
        assert prot.update(i * 0.02, 62.5, 1.0).energize
    assert prot.update(0.06, 60.0, 1.0).energize
    assert prot.state is ProtectionState.NORMAL
    # but 120 ms of it is not: worst-case onset 20 ms before first seen, one more sample would be too late
    for i in range(7):
        status = prot.update(1.0 + i * 0.02, 62.5, 1.0)
    assert not status.energize


def test_enter_service_waits_for_the_delay_then_ramps() -> None:
    prot = Protection(sample_period_s=TICK)
    assert run(prot, 0.0, 1.0, 0.0) is not None
    # 299.9 s of good grid: still out of service
    status = None
    t = 1.1
    while t < 1.1 + 299.9:
        status = prot.update(t, 60.0, 1.0)
        assert not status.energize
        t += TICK
    status = prot.update(1.1 + 300.0, 60.0, 1.0)
    assert status.energize
    assert status.event == "enter_service"
    assert status.cap_fraction == 0.0
    half = prot.update(1.1 + 300.0 + 150.0, 60.0, 1.0)
    assert half.cap_fraction == pytest.approx(0.5)
    assert prot.update(1.1 + 300.0 + 300.0, 60.0, 1.0).state is ProtectionState.NORMAL


def test_a_bad_sample_restarts_the_enter_service_delay() -> None:
    prot = Protection(sample_period_s=TICK)
    run(prot, 0.0, 1.0, 0.0)
    prot.update(10.0, 60.0, 1.0)
    prot.update(200.0, 60.2, 1.0)  # outside 59.5-60.1 Hz
    assert not prot.update(400.0, 60.0, 1.0).energize  # only 0 s since the window was re-entered
    assert prot.update(700.0, 60.0, 1.0).energize


def test_der_trip_curves_replace_the_family() -> None:
    prot = Protection(sample_period_s=TICK)
    prot.replace_trips(Quantity.FREQUENCY, True, [TripSetting("HF1", Quantity.FREQUENCY, True, 60.5, 1.0)])
    assert {t.name for t in prot.trips if t.quantity is Quantity.FREQUENCY and t.over} == {"HF1"}
    assert run(prot, 0.0, 2.0, 60.6) == pytest.approx(0.8)


async def test_station_ceases_to_energise_on_loss_of_grid_within_2_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a station discharging 6 kW on a healthy grid
    st, clock, hw, grid = sim_station(tmp_path)
    st.link.up(0.0)
    st.profiles.install(profile(mode="CentralSetpoint", setpoint=-6_000.0), 1, clock.wall())
    await tick_for(st, clock, 2.0)
    assert hw.power_w == pytest.approx(-6_000.0, abs=1.0)
    # when the grid goes dead (0 Hz)
    t_loss = clock.monotonic()
    grid.faults.frequency_hz = 0.0
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    trace = await tick_for(st, clock, 2.5)
    # then the inverter ceased to energise within 2 s (UF2 gets there in 0.16 s from the onset) and stays off
    off_at = next(t for t, cmd in trace if not cmd.energize)
    assert off_at - t_loss <= 0.16 + 1e-9
    assert all(not cmd.energize for t, cmd in trace if t >= off_at)
    assert not hw.energized
    assert hw.power_w == 0.0
    assert any(getattr(r, "fields", {}).get("code") == "GRID_TRIP" for r in caplog.records)


async def test_pll_loss_trips_and_logs_a_sync_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st, clock, _hw, grid = sim_station(tmp_path)
    st.link.up(0.0)
    await tick_for(st, clock, 1.0)
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    t_loss = clock.monotonic()
    grid.faults.pll_locked = False
    trace = await tick_for(st, clock, 2.5)
    off_at = next(t for t, cmd in trace if not cmd.energize)
    assert off_at - t_loss <= 2.0
    codes = [getattr(r, "fields", {}).get("code") for r in caplog.records]
    assert "PLL_SYNC_ERROR" in codes
    assert "GRID_TRIP" in codes
