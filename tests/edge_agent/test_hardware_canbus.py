"""The CAN driver on python-can's virtual bus, against a power stage that speaks the charger model's DBC.

The power stage encodes its status frames and decodes the agent's commands with cantools from the DBC file, as the
charger's firmware would; it never uses the driver's code.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
from cantools.database.can import Database

from edge_agent.hardware import HardwareError
from edge_agent.hardware.canbus import EXAMPLE_DBC, CanHardware

pytestmark = pytest.mark.timeout(30)

STATUS: dict[str, dict[str, float]] = {
    "BMS_Status": {"SoC": 64.5, "PackTemperature": 28.7, "PackCapacity": 60_000},
    "Grid_Status": {"GridFrequency": 59.987, "GridVoltage": 240.1},
    "Meter_Energy": {"EnergyImport": 123_456, "EnergyExport": 7_890},
}


class PowerStage:
    """The other end of the bus: follows the agent's commands and broadcasts its status every 20 ms.

    Honours the command's revert timer: no command for ``CommandTimeout`` ms and it goes to 0 W, contactors open.
    """

    def __init__(self, channel: str, dbc: Path = EXAMPLE_DBC) -> None:
        db = cantools.database.load_file(str(dbc))
        assert isinstance(db, Database)
        self.db = db
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.power_w = 0.0
        self.energized = True
        self.commands: list[dict[str, Any]] = []
        self.status = {name: dict(values) for name, values in STATUS.items()}
        self.power_signal = "ACPower"  # the name this stage's DBC gives its AC power
        self._last_command: float | None = None

    def _command_frame_id(self) -> int:
        return int(self.db.get_message_by_name("Power_Command").frame_id)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg = self.bus.recv(timeout=0)
            while msg is not None:
                if msg.arbitration_id == self._command_frame_id():
                    cmd: Any = self.db.decode_message(msg.arbitration_id, bytes(msg.data), decode_choices=False)
                    self.commands.append(dict(cmd))
                    self.energized = bool(cmd["Energize"])
                    self.power_w = float(cmd["PowerSetpoint"]) if self.energized else 0.0
                    self._last_command = loop.time()
                msg = self.bus.recv(timeout=0)
            last = self.commands[-1] if self.commands else None
            silent_s = loop.time() - self._last_command if self._last_command is not None else 0.0
            if last and silent_s > last["CommandTimeout"] / 1000:
                self.power_w, self.energized = 0.0, False  # the revert timer ran out
            stage = {self.power_signal: self.power_w, "InverterTemperature": 41.2, "Energized": int(self.energized),
                     "PllLocked": 1}  # fmt: skip
            for name, values in (*self.status.items(), ("Stage_Status", stage)):
                message = self.db.get_message_by_name(name)
                self.bus.send(can.Message(arbitration_id=message.frame_id, data=message.encode(values),
                                          is_extended_id=False))  # fmt: skip
            await asyncio.sleep(0.02)


@pytest.fixture
async def bus() -> AsyncIterator[tuple[str, PowerStage]]:
    channel = f"edge-{uuid.uuid4().hex[:8]}"
    stage = PowerStage(channel)
    task = asyncio.ensure_future(stage.run())
    yield channel, stage
    task.cancel()
    stage.bus.shutdown()


async def _read_when_ready(hw: CanHardware) -> Any:
    for _ in range(50):
        try:
            return await hw.read()
        except HardwareError:
            await asyncio.sleep(0.02)
    raise AssertionError("no status from the power stage")


async def _until(check: Any) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.02)


async def _read_until(hw: CanHardware, check: Any) -> Any:
    """The driver's measurement once it shows ``check`` (status frames lag the stage's state by up to a cycle)."""
    for _ in range(100):
        m = await hw.read()
        if check(m):
            return m
        await asyncio.sleep(0.02)
    return m


async def test_it_decodes_the_status_frames_the_dbc_describes(bus: Any) -> None:
    # given a power stage broadcasting its status, encoded by cantools from the example DBC
    channel, _ = bus
    hw = CanHardware(interface="virtual", channel=channel)
    # when the driver reads
    try:
        m = await _read_when_ready(hw)
    finally:
        await hw.close()
    # then every value is the physical one the DBC's scaling gives
    assert m.soc == pytest.approx(0.645)
    assert m.pack_temp_c == pytest.approx(28.7)
    assert m.inverter_temp_c == pytest.approx(41.2)
    assert m.frequency_hz == pytest.approx(59.987)
    assert m.voltage_v == pytest.approx(240.1)
    assert m.capacity_wh == pytest.approx(60_000)
    assert (m.energy_import_wh, m.energy_export_wh) == (123_456, 7_890)
    assert m.pll_locked
    assert m.energized


async def test_setpoints_decode_by_the_dbc_with_a_counter_and_the_revert_time(bus: Any) -> None:
    # given a driver with a 2 s revert time
    channel, stage = bus
    hw = CanHardware(interface="virtual", channel=channel, revert_s=2.0)
    try:
        await _read_when_ready(hw)
        # when it commands a 4.2 kW discharge, then a trip
        await hw.apply(-4_200.0, True)
        assert (await _read_until(hw, lambda m: m.power_w == -4_200.0)).power_w == -4_200.0
        await hw.apply(0.0, False)
        await _until(lambda: not stage.energized)
    finally:
        await hw.close()
    # then the stage decoded both commands from the DBC: setpoint, energise, rolling counter, revert time
    assert [(c["PowerSetpoint"], c["Energize"]) for c in stage.commands] == [(-4_200, 1), (0, 0)]
    assert [c["Counter"] for c in stage.commands] == [1, 2]
    assert {c["CommandTimeout"] for c in stage.commands} == {2_000}


async def test_a_stage_honouring_the_revert_time_stops_when_the_commands_stop(bus: Any) -> None:
    # given a stage discharging on the agent's command with a 0.3 s revert time
    channel, _ = bus
    hw = CanHardware(interface="virtual", channel=channel, revert_s=0.3)
    try:
        await _read_when_ready(hw)
        await hw.apply(-4_200.0, True)
        assert (await _read_until(hw, lambda m: m.power_w == -4_200.0)).power_w == -4_200.0
        # when the agent sends nothing more (and only listens)
        m = await _read_until(hw, lambda m: m.power_w == 0.0)
    finally:
        await hw.close()
    # then the stage is at 0 W with its contactors open, by itself
    assert m.power_w == 0.0
    assert not m.energized


async def test_stop_reaches_the_stage_on_a_bus_handle_of_its_own(bus: Any) -> None:
    channel, stage = bus
    hw = CanHardware(interface="virtual", channel=channel)
    try:
        await _read_when_ready(hw)
        await hw.apply(-4_200.0, True)
        await _until(lambda: stage.power_w == -4_200.0)
        await hw.stop()
        await _until(lambda: not stage.energized)
    finally:
        await hw.close()
    assert stage.power_w == 0.0
    assert not stage.energized


def _maker_dbc(tmp_path: Path) -> Path:
    """The example DBC as a maker might write it: power in kW under a signal name of its own, tagged with its role."""
    text = EXAMPLE_DBC.read_text()
    text = text.replace(
        ' SG_ ACPower : 0|32@1- (1,0) [-100000|100000] "W" EdgeAgent',
        ' SG_ Stage_P_kW : 0|32@1- (0.001,0) [-100|100] "kW" EdgeAgent',
    )
    text += 'BA_ "EdgeAgentRole" SG_ 400 Stage_P_kW "ACPower";\n'
    path = tmp_path / "maker.dbc"
    path.write_text(text)
    return path


async def test_a_makers_dbc_maps_by_role_attribute_and_converts_units(tmp_path: Path) -> None:
    # given a stage whose DBC reports power in kW under its own signal name, tagged EdgeAgentRole=ACPower
    dbc = _maker_dbc(tmp_path)
    channel = f"edge-{uuid.uuid4().hex[:8]}"
    stage = PowerStage(channel, dbc)
    task = asyncio.ensure_future(stage.run())
    stage.power_signal, stage.power_w = "Stage_P_kW", -4.2  # kW, this stage's own unit
    hw = CanHardware(dbc=dbc, interface="virtual", channel=channel)
    try:
        # when the driver reads
        m = await _read_when_ready(hw)
    finally:
        await hw.close()
        task.cancel()
        stage.bus.shutdown()
    # then the power is found by its role and converted to watts
    assert m.power_w == pytest.approx(-4_200.0)


def test_a_dbc_lacking_a_role_is_refused_by_name(tmp_path: Path) -> None:
    # given a DBC with no grid frequency signal
    path = tmp_path / "incomplete.dbc"
    path.write_text(EXAMPLE_DBC.read_text().replace(" SG_ GridFrequency :", " SG_ SomethingElse :"))
    # when the driver loads it, then it names what is missing
    with pytest.raises(HardwareError, match="GridFrequency"):
        _ = CanHardware(dbc=path).map


def test_the_example_dbc_says_it_is_an_example() -> None:
    db = cantools.database.load_file(str(EXAMPLE_DBC))
    assert isinstance(db, Database)
    assert EXAMPLE_DBC.name == "example_charger.dbc"
    assert db.dbc is not None
    assert "EXAMPLE ONLY" in EXAMPLE_DBC.read_text()


async def test_silence_on_the_bus_is_a_hardware_error() -> None:
    hw = CanHardware(interface="virtual", channel=f"empty-{uuid.uuid4().hex[:8]}", stale_after_s=0.1)
    try:
        with pytest.raises(HardwareError, match="no recent CAN status"):
            await hw.read()
    finally:
        await hw.close()
