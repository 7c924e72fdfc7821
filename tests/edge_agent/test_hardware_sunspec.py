"""The SunSpec Modbus driver against a pymodbus TCP server simulating an inverter that follows its setpoint."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.hardware import HardwareError
from edge_agent.hardware.sunspec import POINTS, SUNS, SunSpecHardware, decode, encode

pytestmark = pytest.mark.timeout(30)
BASE = 40000
LENGTHS = {1: 66, 701: 153, 713: 7, 704: 4, 123: 24}


def _layout() -> tuple[list[int], dict[int, int]]:
    regs = list(SUNS)
    at: dict[int, int] = {}
    for model, length in LENGTHS.items():
        at[model] = BASE + len(regs)
        regs += [model, length] + [0] * length
    regs += [0xFFFF, 0]
    return regs, at


class InverterSim:
    """A SunSpec inverter as a pymodbus SimDevice; on every access, W follows the enabled setpoint if connected."""

    def __init__(self) -> None:
        self.regs, self.at = _layout()
        init = {
            (701, "W_SF"): 0, (701, "V_SF"): -1, (701, "Hz_SF"): -3, (701, "TotWh_SF"): 0, (701, "Tmp_SF"): -1,
            (701, "LNV"): 2401, (701, "Hz"): 59_987, (701, "TmpSnk"): 412, (701, "TmpOt"): 287,
            (701, "TotWhAbs"): 123_456, (713, "WHRtg"): 6_000, (713, "WH_SF"): 1, (713, "SoC"): 645,
            (713, "Pct_SF"): -1, (704, "WSet_SF"): 0,
        }  # fmt: skip
        for (model, point), value in init.items():
            self.set(model, point, value)
        self.device = SimDevice(
            id=0,
            simdata=[SimData(BASE, values=list(self.regs), datatype=DataType.REGISTERS)],
            action=self._action,
        )

    def set(self, model: int, point: str, value: int) -> None:
        off, kind = POINTS[model][point]
        i = self.at[model] + off - BASE
        words = encode(value, kind)
        self.regs[i : i + len(words)] = words

    def get(self, model: int, point: str) -> int:
        off, kind = POINTS[model][point]
        i = self.at[model] + off - BASE
        return decode(self.regs, i, kind)

    async def _action(
        self, function_code: int, start_address: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> None:
        self.regs = registers  # the live register array of the running server
        target = self.get(704, "WSet") if self.get(704, "WSetEna") and self.get(123, "Conn") else 0
        self.set(701, "W", target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def inverter() -> AsyncIterator[tuple[InverterSim, int]]:
    sim = InverterSim()
    port = _free_port()
    server = ModbusTcpServer(sim.device, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    yield sim, port
    await server.shutdown()


async def test_it_discovers_the_models_and_reads_scaled_measurements(inverter: Any) -> None:
    _, port = inverter
    hw = SunSpecHardware(host="127.0.0.1", port=port)
    try:
        m = await hw.read()
    finally:
        await hw.close()
    assert set(hw.models) >= {701, 713, 704, 123}
    assert m.voltage_v == pytest.approx(240.1)
    assert m.frequency_hz == pytest.approx(59.987)
    assert m.soc == pytest.approx(0.645)
    assert m.capacity_wh == pytest.approx(60_000)
    assert m.inverter_temp_c == pytest.approx(41.2)
    assert m.energy_import_wh == 123_456


async def test_a_discharge_command_becomes_an_injection_setpoint_and_the_meter_follows(inverter: Any) -> None:
    sim, port = inverter
    hw = SunSpecHardware(host="127.0.0.1", port=port)
    try:
        await hw.apply(-5_000.0, True)  # agent: discharge 5 kW
        assert sim.get(704, "WSet") == 5_000  # SunSpec: inject 5 kW
        assert sim.get(123, "Conn") == 1
        assert (await hw.read()).power_w == pytest.approx(-5_000.0)
        await hw.apply(0.0, False)  # trip: open the contactors
        assert sim.get(123, "Conn") == 0
        assert (await hw.read()).power_w == 0.0
    finally:
        await hw.close()


async def test_an_absent_device_is_a_hardware_error() -> None:
    hw = SunSpecHardware(host="127.0.0.1", port=_free_port(), timeout_s=0.3)
    with pytest.raises(HardwareError):
        await hw.read()
