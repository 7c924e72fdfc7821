"""The SunSpec Modbus driver against a pymodbus server laid out by pysunspec2 from the official model definitions.

The inverter (``sunspec_inverter``) never looks at the driver: its registers are encoded and decoded by pysunspec2,
and pysunspec2's own Modbus client confirms it is a SunSpec device as the standard describes one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge_agent.hardware import HardwareError
from edge_agent.hardware.sunspec import SunSpecHardware, model_def
from tests.edge_agent.sunspec_inverter import SunSpecInverter

pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def make_inverter() -> AsyncIterator[Callable[..., Any]]:
    started: list[SunSpecInverter] = []

    async def _make(*args: Any, **kwargs: Any) -> tuple[SunSpecInverter, int]:
        port = _free_port()
        inverter = await SunSpecInverter(*args, **kwargs).start(port)
        started.append(inverter)
        return inverter, port

    yield _make
    for inverter in started:
        await inverter.stop()


@pytest.fixture
async def hardware() -> AsyncIterator[Callable[..., SunSpecHardware]]:
    made: list[SunSpecHardware] = []

    def _make(port: int, **kwargs: Any) -> SunSpecHardware:
        hw = SunSpecHardware(host="127.0.0.1", port=port, timeout_s=0.5, **kwargs)
        made.append(hw)
        return hw

    yield _make
    for hw in made:
        await hw.close()


def test_the_model_definitions_are_the_official_ones() -> None:
    # given the offsets the SunSpec Alliance's model JSON gives (counted from the model's ID register)
    # then the driver's definitions are those, not a table of its own
    ac, ctl = model_def(701).points, model_def(704).points
    assert (ac["W"].offset, ac["Hz"].offset, ac["W_SF"].offset) == (10, 17, 116)
    assert (ctl["WSetEna"].offset, ctl["WSet"].offset, ctl["WSetRvrtTms"].offset, ctl["WSet_SF"].offset) == (
        22, 24, 31, 55,
    )  # fmt: skip
    assert ac["W"].sf == "W_SF"
    assert ac["Hz"].type == "uint32"


async def test_the_simulated_inverter_is_a_sunspec_device_to_pysunspec2s_own_client(make_inverter: Any) -> None:
    # given the simulated inverter (so a fault in it cannot hide a fault in the driver)
    _sim, port = await make_inverter()

    # when pysunspec2's reference client scans it
    def scan() -> dict[str, Any]:
        from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

        dev = SunSpecModbusClientDeviceTCP(ipaddr="127.0.0.1", ipport=port)
        try:
            dev.scan()
            ac = dev.models[701][0]
            return {"models": {k for k in dev.models if isinstance(k, int)}, "hz": ac.Hz.cvalue, "v": ac.LNV.cvalue}
        finally:
            dev.close()

    found = await asyncio.to_thread(scan)
    # then it finds every model and reads the points the standard way
    assert found["models"] == {1, 701, 713, 704, 123}
    assert found["hz"] == pytest.approx(59.987)
    assert found["v"] == pytest.approx(240.1)


async def test_it_discovers_the_models_by_walking_the_chain_from_the_sunspec_base(
    make_inverter: Any, hardware: Any
) -> None:
    # given a device with models the driver does not use, in an order of the device's choosing
    sim, port = await make_inverter(models=(1, 702, 123, 713, 11, 701, 704))
    hw = hardware(port)
    # when the driver reads for the first time
    await hw.read()
    # then every model is found at its address in the chain
    assert hw.models == sim.at


async def test_it_reads_measurements_at_the_official_offsets_with_their_scale_factors(
    make_inverter: Any, hardware: Any
) -> None:
    # given an inverter injecting 4.2 kW, with scale factors other than 10^0 wherever the model allows one
    sim, port = await make_inverter(
        values={
            (701, "W_SF"): 1,
            (701, "W"): 420,
            (713, "WH_SF"): 2,
            (713, "WHRtg"): 770,
            (701, "TotWh_SF"): 1,
            (701, "TotWhAbs"): 12_345,
            (701, "TotWhInj"): 789,
        }
    )
    sim.update = lambda now=None: None  # hold W where it was put
    hw = hardware(port)
    # when the driver reads it
    m = await hw.read()
    # then each point is the value pysunspec2 computes (raw x 10^SF), in the agent's sign convention
    assert m.power_w == pytest.approx(-4_200.0) == -sim.power_w
    assert m.frequency_hz == pytest.approx(59.987)
    assert m.voltage_v == pytest.approx(240.1)
    assert m.soc == pytest.approx(0.645)
    assert m.capacity_wh == pytest.approx(77_000)
    assert (m.energy_import_wh, m.energy_export_wh) == (123_450, 7_890)
    assert (m.inverter_temp_c, m.pack_temp_c) == (pytest.approx(41.2), pytest.approx(28.7))
    assert m.energized


async def test_a_discharge_command_becomes_an_injection_setpoint_with_a_revert_to_zero(
    make_inverter: Any, hardware: Any
) -> None:
    # given an inverter whose setpoint has a scale factor of 10^1
    sim, port = await make_inverter(values={(704, "WSet_SF"): 1})
    hw = hardware(port, revert_s=2.0)
    # when the agent discharges 5 kW
    await hw.apply(-5_000.0, True)
    # then the inverter is told to inject 5 kW in watts, to fall back to 0 W (enabled) 2 s after the last write
    assert sim.get(704, "WSet", scaled=True) == 5_000
    assert (sim.get(704, "WSetEna"), sim.get(704, "WSetMod")) == (1, 1)
    assert sim.get(704, "WSetRvrt") == 0
    assert sim.get(704, "WSetEnaRvrt") == 1
    assert sim.get(704, "WSetRvrtTms") == 2
    assert sim.get(123, "Conn") == 1
    assert (await hw.read()).power_w == pytest.approx(-5_000.0)
    # and when it trips, the contactors open and the power goes to 0
    await hw.apply(0.0, False)
    assert sim.get(123, "Conn") == 0
    m = await hw.read()
    assert m.power_w == 0.0
    assert not m.energized


async def test_the_inverter_stops_by_itself_when_the_agent_stops_writing(make_inverter: Any, hardware: Any) -> None:
    # given an inverter discharging 5 kW on the agent's setpoint with a 1 s revert time
    sim, port = await make_inverter()
    hw = hardware(port, revert_s=1.0)
    await hw.apply(-5_000.0, True)
    assert sim.power_w == 5_000.0
    # when the agent says nothing more (hung, or dead)
    for _ in range(100):
        if sim.power_w == 0.0:
            break
        await asyncio.sleep(0.05)
    # then the inverter has reverted to 0 W on its own timer
    assert sim.power_w == 0.0
    assert sim.reverted_at is not None


async def test_each_apply_restarts_the_inverters_revert_timer(make_inverter: Any, hardware: Any) -> None:
    # given an agent refreshing its setpoint every 0.2 s with a 2 s revert time
    sim, port = await make_inverter()
    hw = hardware(port, revert_s=2.0)
    # when it keeps doing so for longer than that
    for _ in range(13):
        await hw.apply(-3_000.0, True)
        await asyncio.sleep(0.2)
    # then the inverter never reverted
    assert sim.reverted_at is None
    assert sim.power_w == 3_000.0


async def test_stop_disconnects_and_zeroes_over_a_connection_of_its_own(make_inverter: Any, hardware: Any) -> None:
    # given a discharging inverter
    sim, port = await make_inverter()
    hw = hardware(port)
    await hw.apply(-5_000.0, True)
    # when the fault path stops it
    await hw.stop()
    # then it is disconnected and at 0 W
    assert sim.get(123, "Conn") == 0
    assert sim.get(704, "WSet") == 0
    assert sim.power_w == 0.0


async def test_a_read_the_device_refuses_is_a_hardware_error(make_inverter: Any, hardware: Any) -> None:
    # given an inverter whose measurement model answers with a Modbus exception (e.g. its meter board failed)
    sim, port = await make_inverter()
    hw = hardware(port)
    await hw.read()
    sim.fail_reads.add(701)
    # when the driver reads, then it is a hardware error
    with pytest.raises(HardwareError):
        await hw.read()


async def test_a_device_lacking_a_needed_model_is_refused(make_inverter: Any, hardware: Any) -> None:
    # given a device with no storage-capacity model (713)
    _, port = await make_inverter(models=(1, 701, 704, 123))
    # when the driver connects, then it names what is missing
    with pytest.raises(HardwareError, match="713"):
        await hardware(port).read()


async def test_an_absent_device_is_a_hardware_error(hardware: Any) -> None:
    with pytest.raises(HardwareError):
        await hardware(_free_port()).read()
