"""Hardware faults: a driver that raises, one that hangs, and an agent killed while the inverter discharges.

A failed or hung read or write must not leave the last setpoint in force: the station commands 0 W and
de-energises through every path the driver has, reports the fault (StatusNotification Faulted, NotifyEvent, session
log), and the inverter's own revert timer stops it when the agent cannot (killed with SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.v201 import call

from edge_agent.config import ConfigError, load_config
from edge_agent.hardware import HardwareError, Measurement
from edge_agent.hardware.sim import SimulatedHardware
from edge_agent.runner import tick_forever
from edge_agent.station import Station
from tests.edge_agent.csms import RecordingCsms
from tests.edge_agent.helpers import profile, sim_station, tick_for
from tests.edge_agent.sunspec_inverter import SunSpecInverter

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(ocpp.__file__).parent / "v201" / "schemas"


@dataclass
class FaultyHardware:
    """The simulated charger behind a driver that can be made to raise or hang on read, apply or stop."""

    inner: SimulatedHardware
    read_fails: bool = False
    read_hangs: bool = False
    apply_fails: bool = False
    apply_hangs: bool = False
    stop_hangs: bool = False
    stops: int = 0

    async def _hang(self) -> None:
        await asyncio.Event().wait()

    async def read(self) -> Measurement:
        if self.read_hangs:
            await self._hang()
        if self.read_fails:
            raise HardwareError("meter: no answer (simulated)")
        return await self.inner.read()

    async def apply(self, power_w: float, energize: bool) -> None:
        if self.apply_hangs:
            await self._hang()
        if self.apply_fails:
            raise HardwareError("inverter: write refused (simulated)")
        await self.inner.apply(power_w, energize)

    async def stop(self) -> None:
        self.stops += 1
        if self.stop_hangs:
            await self._hang()
        self.inner.apply_now(0.0, False)

    async def close(self) -> None:
        return None


async def _discharging(tmp_path: Path, **params: Any) -> tuple[Station, Any, SimulatedHardware, FaultyHardware]:
    st, clock, hw, _ = sim_station(tmp_path, hardware_timeout_s=0.2, hardware_recover_s=2.0, **params)
    faulty = FaultyHardware(hw)
    st.hw = faulty
    st.link.up(0.0)
    st.profiles.install(profile(mode="CentralSetpoint", setpoint=-5_000.0), 1, clock.wall())
    await tick_for(st, clock, 1.0)
    assert hw.power_w == pytest.approx(-5_000.0, abs=1.0)
    st.direct.clear()
    return st, clock, hw, faulty


def _sent(st: Station, action: str) -> list[dict[str, Any]]:
    return [payload for name, payload in st.direct if name == action]


def _codes(caplog: pytest.LogCaptureFixture) -> list[str | None]:
    return [getattr(r, "fields", {}).get("code") for r in caplog.records]


def _valid_notify_event(payload: dict[str, Any]) -> dict[str, Any]:
    """The wire form of a NotifyEvent, checked against the OCPP 2.0.1 JSON schema."""
    wire = dict(remove_nones(snake_to_camel_case(serialize_as_dict(call.NotifyEvent(**payload)))))
    jsonschema.validate(wire, json.loads((SCHEMAS / "NotifyEventRequest.json").read_text()))
    return wire


async def test_a_driver_that_raises_stops_the_discharge_and_reports_the_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a station discharging 5 kW
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    st, clock, hw, faulty = await _discharging(tmp_path)
    # when the driver's read starts raising
    faulty.read_fails = True
    clock.advance(0.1)
    cmd = await st.tick()
    # then in that same tick the inverter is commanded to 0 W and de-energised, through every path it has
    assert cmd.power_w == 0.0
    assert not cmd.energize
    assert hw.power_w == 0.0
    assert not hw.energized
    assert faulty.stops == 1
    # and the fault is reported: connector Faulted, a NotifyEvent (valid OCPP), the session log
    assert [p["connector_status"] for p in _sent(st, "StatusNotification")] == ["Faulted"]
    (event,) = _sent(st, "NotifyEvent")
    wire = _valid_notify_event(event)["eventData"][0]
    assert wire["variable"] == {"name": "Problem"}
    assert wire["actualValue"] == "true"
    assert wire["techCode"] == "HARDWARE_FAULT"
    assert "HARDWARE_FAULT" in _codes(caplog)


async def test_power_stays_at_zero_until_the_hardware_has_answered_for_the_recovery_time(tmp_path: Path) -> None:
    # given a station whose driver failed for a while (recovery time 2 s)
    st, clock, hw, faulty = await _discharging(tmp_path)
    faulty.read_fails = True
    await tick_for(st, clock, 1.0)
    st.direct.clear()
    # when the driver answers again
    faulty.read_fails = False
    early = await tick_for(st, clock, 1.5)
    # then power stays at 0 until 2 s of good reads and writes, then the fault clears and the profile resumes
    assert all(cmd.power_w == 0.0 and not cmd.energize for _, cmd in early)
    await tick_for(st, clock, 2.0)
    assert hw.power_w == pytest.approx(-5_000.0, abs=1.0)
    assert [p["connector_status"] for p in _sent(st, "StatusNotification")] == ["Occupied"]
    (event,) = _sent(st, "NotifyEvent")
    wire = _valid_notify_event(event)["eventData"][0]
    assert wire["cleared"] is True
    assert wire["actualValue"] == "false"


async def test_a_failed_write_falls_back_to_the_drivers_independent_stop(tmp_path: Path) -> None:
    # given a station discharging 5 kW
    st, clock, hw, faulty = await _discharging(tmp_path)
    # when the setpoint write fails (the normal path is gone)
    faulty.apply_fails = True
    clock.advance(0.1)
    await st.tick()
    # then the driver's own stop path opened the contactors
    assert faulty.stops == 1
    assert hw.power_w == 0.0
    assert not hw.energized
    assert st.connector_status() == "Faulted"


async def test_a_driver_that_hangs_on_read_cannot_hang_the_tick(tmp_path: Path) -> None:
    # given a station discharging 5 kW, its driver's read timing out after 0.2 s
    st, clock, hw, faulty = await _discharging(tmp_path)
    # when the read never returns
    faulty.read_hangs = True
    clock.advance(0.1)
    cmd = await asyncio.wait_for(st.tick(), 10.0)  # a guard: the station's own bound must end it first
    # then the tick ended on its own timeout and the inverter was stopped through the paths still working
    assert cmd.power_w == 0.0
    assert hw.power_w == 0.0
    assert not hw.energized
    assert "no answer within 0.2 s" in st.hw_watch.error


async def test_a_driver_that_hangs_everywhere_still_ends_the_tick_within_the_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a station whose driver hangs on every call (read, write, stop)
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    st, clock, _hw, faulty = await _discharging(tmp_path)
    faulty.read_hangs = faulty.apply_hangs = faulty.stop_hangs = True
    # when it ticks
    clock.advance(0.1)
    cmd = await asyncio.wait_for(st.tick(), 10.0)
    # then the tick ended (read, command and stop each cut at their timeout) and says no path got through:
    # the device's revert timer is what stops it now
    assert cmd.power_w == 0.0
    assert st.hw_watch.faulted
    logged = [getattr(r, "fields", {}) for r in caplog.records]
    stop_logs = [f for f in logged if f.get("event") == "fault_stop"]
    assert "revert timer" in stop_logs[-1]["paths"]


async def test_the_runner_treats_a_tick_that_raised_as_a_fault(tmp_path: Path) -> None:
    # given a station whose control step has a bug that raises
    st, _clock, hw, _ = await _discharging(tmp_path)

    def broken(*_: Any) -> Any:
        raise ZeroDivisionError("a bug")

    st.control = broken  # type: ignore[method-assign,assignment]
    stop = asyncio.Event()
    store = st.outbox.store
    # when the runner ticks it once
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stop.set)
    await tick_forever([st], store, 0.1, stop=stop)
    # then the inverter was stopped and the connector is Faulted
    assert hw.power_w == 0.0
    assert st.connector_status() == "Faulted"


@pytest.mark.parametrize("version", ["2.1", "2.0.1"])
async def test_the_csms_hears_of_the_fault_and_of_its_clearing(make_agent: Any, version: str) -> None:
    # given an agent connected over OCPP (2.1 or 2.0.1) to a CSMS, its driver about to fail
    csms = await RecordingCsms(stations={"edge-1": "pw"}).start(subprotocols=(f"ocpp{version}",))
    try:
        agent = await make_agent(csms, password="pw", hardware_timeout_s=0.2, hardware_recover_s=0.5)
        await csms.wait_for(lambda: csms.of("StatusNotification"))
        faulty = FaultyHardware(agent.hw)
        agent.station.hw = faulty
        # when the driver's reads fail for a while, then work again
        faulty.read_fails = True
        await csms.wait_for(lambda: csms.of("NotifyEvent"))
        faulty.read_fails = False
        await csms.wait_for(lambda: len(csms.of("NotifyEvent")) == 2)
        # then the CSMS was told: connector Faulted and back, the EVSE's Problem raised and cleared
        statuses = [s["connector_status"] for s in csms.of("StatusNotification")]
        assert statuses[-2:] == ["Faulted", "Occupied"]
        raised, cleared = (e["event_data"][0] for e in csms.of("NotifyEvent"))
        assert (raised["variable"]["name"], raised["actual_value"], raised["tech_code"]) == (
            "Problem", "true", "HARDWARE_FAULT",
        )  # fmt: skip
        assert cleared["cleared"] is True
        assert cleared["cause"] == raised["event_id"]
    finally:
        await csms.stop()


def test_the_revert_time_may_not_exceed_the_failsafe_deadline(tmp_path: Path) -> None:
    base = {"EDGE_AGENT_STATION_ID": "s", "EDGE_AGENT_CSMS_URL": "ws://x/ocpp"}
    with pytest.raises(ConfigError, match="revert_s"):
        load_config(None, {**base, "EDGE_AGENT_HARDWARE_REVERT_S": "5"})
    with pytest.raises(ConfigError, match="can_dbc"):
        load_config(None, {**base, "EDGE_AGENT_HARDWARE_DRIVER": "can"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_agent_killed_while_discharging_leaves_an_inverter_that_stops_by_itself(tmp_path: Path) -> None:
    # given an agent process discharging 5 kW into a SunSpec inverter (laid out by pysunspec2), revert time 1 s
    port = _free_port()
    inverter = await SunSpecInverter().start(port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.edge_agent.discharging_agent", str(port), "--revert", "1",
        "--var-dir", str(tmp_path), cwd=REPO, env=env,
    )  # fmt: skip
    try:
        for _ in range(1_200):  # up to 60 s for the process to start on a loaded machine
            if inverter.power_w >= 4_000.0:
                break
            await asyncio.sleep(0.05)
        assert inverter.power_w >= 4_000.0, "the agent should be discharging before it is killed"
        assert inverter.get(704, "WSetRvrtTms") == 1
        # when the agent is killed without any chance to say goodbye
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.sleep(0.05)  # a request already on the wire when it died may still land
        writes_at_kill = len(inverter.writes)
        for _ in range(200):
            if inverter.power_w == 0.0:
                break
            await asyncio.sleep(0.05)
        # then the inverter reached 0 W by its own revert timer: nothing was written after the kill
        assert inverter.power_w == 0.0
        assert inverter.reverted_at is not None
        assert len(inverter.writes) == writes_at_kill
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await inverter.stop()
