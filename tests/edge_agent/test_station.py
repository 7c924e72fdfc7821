"""Station behaviour around the car and the hardware: ISO 15118 timeout, thermal derating, metering."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edge_agent.hardware.sim import SimulatedCar
from tests.edge_agent.helpers import profile, sim_station, tick_for


def _codes(caplog: pytest.LogCaptureFixture) -> list[str | None]:
    return [getattr(r, "fields", {}).get("code") for r in caplog.records]


async def test_a_car_that_answers_too_slowly_is_logged_and_gets_no_power(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a station whose newly plugged car answers PowerDeliveryReq after 400 ms (limit 250 ms)
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    st, clock, hw, _ = sim_station(tmp_path)
    st.link.up(0.0)
    st.unplug()
    st.plug_in(SimulatedCar(soc=0.5, iso15118_latency_s=0.4, departure=st.departure_in(8)))
    # when the handshake runs out (the loop keeps ticking meanwhile)
    for _ in range(6):
        await tick_for(st, clock, 0.1)
        await asyncio.sleep(0.1)
    # then EVSE_ERR_TIMEOUT is in the session log and the charger delivers nothing
    assert "EVSE_ERR_TIMEOUT" in _codes(caplog)
    assert not st.ev_ready
    assert hw.power_w == 0.0


async def test_a_cooling_fault_derates_and_over_temperature_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a station discharging at full power on a hot day with a failed inverter fan
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    st, clock, hw, _ = sim_station(tmp_path, tick_s=1.0)
    st.link.up(0.0)
    hw.ambient_c, hw.cooling_fault = 40.0, True
    st.profiles.install(profile(mode="CentralSetpoint", setpoint=-11_000.0), 1, clock.wall())
    # when it runs for an hour of simulated time (the link stays up: the monitor is told so each minute)
    trace = []
    for _ in range(60):
        st.link.up(clock.monotonic())
        trace += await tick_for(st, clock, 60.0, tick_s=1.0)
    # then the inverter heats up, power is derated on the way, and over-temperature is logged at the limit
    powers = [cmd.power_w for _, cmd in trace]
    assert powers[0] < -10_000
    assert max(powers[-60:]) > -11_000 * 0.5  # derated to well under half of the setpoint
    assert any(cmd.bound == "thermal" for _, cmd in trace)
    assert hw.inverter_temp_c < st.limits.inverter_max_c  # derating keeps it below the limit
    assert "OVER_TEMPERATURE" not in _codes(caplog)
    # and when the heat sink reads its maximum anyway (e.g. 90 C ambient), power goes to 0 and it is logged
    hw.ambient_c = 90.0
    await tick_for(st, clock, 600.0, tick_s=1.0)
    assert "OVER_TEMPERATURE" in _codes(caplog)
    assert hw.power_w == 0.0


async def test_meter_values_every_second_while_regulating_and_idle_interval_otherwise(tmp_path: Path) -> None:
    st, clock, _, _ = sim_station(tmp_path, meter_interval_s=1.0, idle_meter_interval_s=10.0)
    st.link.up(0.0)
    st.outbox.items.clear()
    await tick_for(st, clock, 20.0)
    idle = len(st.outbox.items)
    st.outbox.items.clear()
    st.profiles.install(profile(mode="CentralSetpoint", setpoint=-3_000.0), 1, clock.wall())
    await tick_for(st, clock, 20.0)
    regulating = len(st.outbox.items)
    assert idle == 2
    assert 19 <= regulating <= 21  # one per second of the 20 s
    payload = st.outbox.items[-1].payload
    measurands = {sv["measurand"] for sv in payload["meterValue"][0]["sampledValue"]}
    assert {"SoC", "Energy.Active.Import.Register", "Energy.Active.Export.Register"} <= measurands
    assert {"Power.Active.Import", "Power.Active.Export"} <= measurands
