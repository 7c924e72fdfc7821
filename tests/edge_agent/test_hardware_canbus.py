"""The CAN driver on python-can's virtual bus, against a simulated power stage + BMS on the same bus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import can
import pytest

from edge_agent.hardware import HardwareError
from edge_agent.hardware.canbus import (
    BMS,
    COMMAND,
    ENERGY,
    GRID,
    ID_BMS,
    ID_COMMAND,
    ID_ENERGY,
    ID_GRID,
    ID_STAGE,
    STAGE,
    CanHardware,
)

pytestmark = pytest.mark.timeout(30)


class PowerStage:
    """The other end of the bus: follows power commands and broadcasts status every 20 ms."""

    def __init__(self, channel: str) -> None:
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.power = 0
        self.energized = True
        self.commands: list[tuple[int, int, int]] = []

    async def run(self) -> None:
        while True:
            msg = self.bus.recv(timeout=0)
            while msg is not None:
                if msg.arbitration_id == ID_COMMAND:
                    cmd = COMMAND.unpack(bytes(msg.data))
                    self.commands.append(cmd)
                    self.power, self.energized = (cmd[0], bool(cmd[1])) if cmd[1] else (0, False)
                msg = self.bus.recv(timeout=0)
            flags = int(self.energized) | 0b10
            for arb, data in (
                (ID_BMS, BMS.pack(6_450, 287, 6_000)),
                (ID_STAGE, STAGE.pack(self.power, 412, flags)),
                (ID_GRID, GRID.pack(59_987, 2_401)),
                (ID_ENERGY, ENERGY.pack(123_456, 7_890)),
            ):
                self.bus.send(can.Message(arbitration_id=arb, data=data, is_extended_id=False))
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


async def test_it_reads_status_frames_into_a_measurement(bus: Any) -> None:
    channel, _ = bus
    hw = CanHardware(interface="virtual", channel=channel)
    try:
        m = await _read_when_ready(hw)
    finally:
        await hw.close()
    assert m.soc == pytest.approx(0.645)
    assert m.pack_temp_c == pytest.approx(28.7)
    assert m.inverter_temp_c == pytest.approx(41.2)
    assert m.frequency_hz == pytest.approx(59.987)
    assert m.voltage_v == pytest.approx(240.1)
    assert m.capacity_wh == pytest.approx(60_000)
    assert (m.energy_import_wh, m.energy_export_wh) == (123_456, 7_890)
    assert m.pll_locked


async def test_commands_reach_the_power_stage_and_it_follows(bus: Any) -> None:
    channel, stage = bus
    hw = CanHardware(interface="virtual", channel=channel)
    try:
        await _read_when_ready(hw)
        await hw.apply(-4_200.0, True)
        for _ in range(50):
            if (await hw.read()).power_w == -4_200.0:
                break
            await asyncio.sleep(0.02)
        assert (await hw.read()).power_w == -4_200.0
        await hw.apply(0.0, False)
        for _ in range(50):
            if not (await hw.read()).energized:
                break
            await asyncio.sleep(0.02)
        assert not (await hw.read()).energized
        assert [c[2] for c in stage.commands] == [1, 2]  # sequence numbers
    finally:
        await hw.close()


async def test_silence_on_the_bus_is_a_hardware_error() -> None:
    hw = CanHardware(interface="virtual", channel=f"empty-{uuid.uuid4().hex[:8]}", stale_after_s=0.1)
    try:
        with pytest.raises(HardwareError, match="no recent CAN status"):
            await hw.read()
    finally:
        await hw.close()
