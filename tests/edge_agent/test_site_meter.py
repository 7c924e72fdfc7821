"""The depot's main meter read by the edge agent (SunSpec models 201-204 over Modbus TCP) and reported to the CSMS
as MeterValues for EVSE 0 (``edge_agent.hardware.sunspec_meter``, ``edge_agent.sitemeter``), against a pymodbus
server laid out by pysunspec2 from the official model definitions (``sunspec_meter``) and an OCPP CSMS over a real
socket.

The meter (hand-made raw values): W 15234 x 10^1 = 152,340 W; TotWhImp 1,234,567 x 10 = 12,345,670 Wh; TotWhExp
890 x 10 = 8,900 Wh; PhV 2301 x 10^-1 = 230.1 V; Hz 5000 x 10^-2 = 50.00 Hz.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent import sessionlog
from edge_agent.config import ConfigError, load_config
from edge_agent.hardware import HardwareError
from edge_agent.hardware.sunspec_meter import SunSpecMeter
from edge_agent.sitemeter import SiteMeterReporter
from tests.edge_agent.sunspec_meter import SunSpecMeterDevice

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def make_meter() -> AsyncIterator[Callable[..., Any]]:
    started: list[SunSpecMeterDevice] = []
    drivers: list[SunSpecMeter] = []

    async def _make(*args: Any, **kwargs: Any) -> tuple[SunSpecMeterDevice, SunSpecMeter]:
        port = _free_port()
        device = SunSpecMeterDevice(*args, **kwargs)
        await device.start(port)
        started.append(device)
        driver = SunSpecMeter("127.0.0.1", port=port, timeout_s=0.5)
        drivers.append(driver)
        return device, driver

    yield _make
    for driver in drivers:
        await driver.close()
    for device in started:
        await device.stop()


async def test_a_three_phase_meter_is_read_at_the_official_offsets_with_its_scale_factors(make_meter: Any) -> None:
    _, meter = await make_meter(203)
    reading = await meter.read()
    assert reading.model == 203
    assert (reading.import_w, reading.energy_import_wh, reading.energy_export_wh) == (152_340, 12_345_670, 8_900)
    assert (reading.voltage_v, reading.frequency_hz) == (230.1, 50.0)


async def test_a_single_phase_meter_with_only_line_to_line_voltage_is_read_too(make_meter: Any) -> None:
    _, meter = await make_meter(201, values={"PhV": None})
    reading = await meter.read()
    # PPV 3985 x 10^-1 = 398.5 V stands in for the missing line-to-neutral voltage
    assert (reading.model, reading.import_w, reading.voltage_v) == (201, 152_340, 398.5)


async def test_export_reads_negative_and_a_reversed_meter_is_set_in_the_config(make_meter: Any) -> None:
    device, meter = await make_meter(204, values={"W": -1_200})
    assert (await meter.read()).import_w == -12_000
    meter.import_positive = False  # the CT wired the other way round: the same register is 12 kW of import
    reading = await meter.read()
    assert (reading.import_w, reading.energy_import_wh, reading.energy_export_wh) == (12_000, 8_900, 12_345_670)
    device.set_power(300)
    assert (await meter.read()).import_w == -3_000


async def test_a_meter_that_does_not_implement_power_is_a_fault_not_a_zero(make_meter: Any) -> None:
    _, meter = await make_meter(203, values={"W": None})
    with pytest.raises(HardwareError, match="no value for W"):
        await meter.read()


async def test_a_device_without_a_meter_model_is_refused() -> None:
    port = _free_port()
    from tests.edge_agent.sunspec_inverter import SunSpecInverter

    inverter = await SunSpecInverter().start(port)
    meter = SunSpecMeter("127.0.0.1", port=port, timeout_s=0.5)
    try:
        with pytest.raises(HardwareError, match="no SunSpec meter model"):
            await meter.read()
    finally:
        await meter.close()
        await inverter.stop()


async def test_the_agent_reports_the_meter_as_evse_0_meter_values_to_the_csms(
    make_meter: Any, make_agent: Any, csms: Any
) -> None:
    # Given an agent connected to the CSMS and the depot's meter on Modbus TCP
    device, meter = await make_meter(203)
    agent = await make_agent(csms, "edge-4", plug=False)
    await _until(lambda: agent.station.link.connected)
    reporter = SiteMeterReporter(agent.station, meter.read, interval_s=0.1)
    stop = asyncio.Event()
    task = asyncio.ensure_future(reporter.run(stop))
    # When it has read twice, the load changing between (W 9000 x 10 = 90 kW)
    await _until(lambda: _meter_values(csms, "edge-4"))
    device.set_power(9_000)
    await _until(lambda: any(_power(m) == (90_000, 0) for m in _meter_values(csms, "edge-4")))
    stop.set()
    await task
    # Then each is a MeterValues for EVSE 0 with the power split by sign and the registers, as the meter has them
    first = _meter_values(csms, "edge-4")[0]
    assert first["evse_id"] == 0
    assert _power(first) == (152_340, 0)
    sampled = {s["measurand"]: s["value"] for s in first["meter_value"][0]["sampled_value"]}
    assert sampled["Energy.Active.Import.Register"] == 12_345_670
    assert (sampled["Voltage"], sampled["Frequency"]) == (230.1, 50.0)


async def test_a_meter_that_stops_answering_sends_nothing_is_logged_once_and_recovers(
    make_meter: Any, make_agent: Any, csms: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger=sessionlog.LOGGER.name)
    device, meter = await make_meter(203)
    agent = await make_agent(csms, "edge-5", plug=False)
    await _until(lambda: agent.station.link.connected)
    reporter = SiteMeterReporter(agent.station, meter.read, interval_s=0.1, io_timeout_s=0.5)
    # When the meter refuses its reads three times in a row
    device.fail_reads = {203}
    assert [await reporter.once() for _ in range(3)] == [False, False, False]
    # Then nothing was queued (no zero reading), and the session log has one SITE_METER_FAULT
    assert reporter.sent == 0
    codes = [getattr(r, "fields", {}).get("code") for r in caplog.records]
    assert codes.count("SITE_METER_FAULT") == 1
    # When it answers again, the next reading goes out without a restart
    device.fail_reads = set()
    assert await reporter.once() is True
    await _until(lambda: _meter_values(csms, "edge-5"))
    assert [getattr(r, "fields", {}).get("event") for r in caplog.records].count("site_meter_recovered") == 1


def test_the_config_names_the_meter_and_refuses_one_without_an_address(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    base = 'station_id = "depot-main"\ncsms_url = "ws://csms/ocpp"\n'
    path.write_text(base + '[site_meter]\ndriver = "sunspec"\nhost = "10.0.0.20"\nunit_id = 3\ninterval_s = 5\n')
    cfg = load_config(path, env={})
    assert (cfg.site_meter.driver, cfg.site_meter.host, cfg.site_meter.port, cfg.site_meter.unit_id) == (
        "sunspec", "10.0.0.20", 502, 3,
    )  # fmt: skip
    path.write_text(base + '[site_meter]\ndriver = "sunspec"\n')
    with pytest.raises(ConfigError, match=r"site_meter\.host"):
        load_config(path, env={})


def _meter_values(csms: Any, station_id: str) -> list[dict[str, Any]]:
    return [p for p in csms.of("MeterValues", station_id) if p["evse_id"] == 0]


def _power(payload: dict[str, Any]) -> tuple[int, int]:
    sampled = {s["measurand"]: s["value"] for s in payload["meter_value"][0]["sampled_value"]}
    return sampled["Power.Active.Import"], sampled["Power.Active.Export"]


async def _until(condition: Callable[[], Any], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
