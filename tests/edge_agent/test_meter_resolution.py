"""Meter values carry each measurand at the meter's resolution: frequency to the mHz, power to the W, Wh registers."""

from __future__ import annotations

from pathlib import Path

from edge_agent.hardware import Measurement
from edge_agent.hardware.canbus import CanHardware
from edge_agent.metering import MeterResolution, sampled_values
from tests.edge_agent.helpers import sim_station


def reading(**kw: float) -> Measurement:
    base = {"power_w": -6_543.21, "energy_import_wh": 12_345.678, "energy_export_wh": 987.49, "soc": 0.61234,
            "pack_temp_c": 25.0, "inverter_temp_c": 30.0, "voltage_v": 239.8176, "frequency_hz": 59.9796}  # fmt: skip
    return Measurement(**{**base, **kw})  # type: ignore[arg-type]


def by_measurand(values: list[dict[str, object]]) -> dict[str, object]:
    return {str(v["measurand"]): v["value"] for v in values}


def test_it_reports_frequency_to_the_millihertz_power_to_the_watt_and_registers_to_the_watt_hour() -> None:
    # given a reading of 59.9796 Hz (inside the 0.036 Hz droop deadband of 60 Hz, but not 60.0)
    values = by_measurand(sampled_values(reading()))
    # then nothing a droop decision depends on is rounded away, and no digit is invented
    assert values["Frequency"] == 59.98
    assert values["Power.Active.Export"] == 6_543
    assert values["Power.Active.Import"] == 0
    assert values["Energy.Active.Import.Register"] == 12_346
    assert values["Energy.Active.Export.Register"] == 987
    assert values["Voltage"] == 239.8
    assert values["SoC"] == 61.2
    assert isinstance(values["Power.Active.Export"], int)


def test_a_meter_that_resolves_less_is_reported_as_it_resolves() -> None:
    # given a meter with a 10 mHz frequency resolution (e.g. a SunSpec Hz_SF of -2)
    values = by_measurand(sampled_values(reading(frequency_hz=60.0149), MeterResolution(frequency_hz=2)))
    # then the agent does not claim a resolution the meter does not have
    assert values["Frequency"] == 60.01


async def test_the_station_sends_the_frequency_it_measured_not_60_hz(tmp_path: Path) -> None:
    # given a station whose grid is at 60.012 Hz (inside the deadband: 60.0 at 0.1 Hz)
    st, clock, _, grid = sim_station(tmp_path)
    grid.nominal_hz = 60.012
    clock.advance(0.1)
    await st.tick()
    # when it reports a meter value
    st.trigger_meter_values()
    payload = st.outbox.items[-1].payload
    # then the CSMS is told 60.012 Hz
    assert by_measurand(payload["meterValue"][0]["sampledValue"])["Frequency"] == 60.012


def test_the_cars_pack_temperature_rides_on_its_soc_sample_to_the_bms_resolution() -> None:
    # given a car whose BMS reads its pack at 41.26 degC
    values = sampled_values(reading(pack_temp_c=41.26, capacity_wh=60_000.0))
    # then the EV's SoC sample carries it at 0.1 degC (OCPP 2.x has no Temperature measurand: customData)
    (soc,) = [v for v in values if v["measurand"] == "SoC"]
    assert soc["customData"] == {"vendorId": "org.openv2g.ev", "packTemperatureCelsius": 41.3}
    # and with no car plugged in there is no pack to report
    (empty,) = [v for v in sampled_values(reading(capacity_wh=0.0)) if v["measurand"] == "SoC"]
    assert "customData" not in empty


def test_a_can_charger_reports_what_its_dbc_frames_resolve() -> None:
    # given the example DBC: PackTemperature 0.1 degC, SoC 0.01 %, GridFrequency 0.001 Hz, GridVoltage 0.1 V,
    # ACPower 1 W, energy registers 1 Wh
    res = CanHardware().meter_resolution
    assert (res.temperature_c, res.soc_pct, res.frequency_hz, res.voltage_v, res.power_w, res.energy_wh) == (
        1,
        2,
        3,
        1,
        0,
        0,
    )


async def test_the_simulated_car_reports_its_pack_temperature(tmp_path: Path) -> None:
    st, clock, _, _ = sim_station(tmp_path)
    clock.advance(0.1)
    await st.tick()
    st.trigger_meter_values()
    values = st.outbox.items[-1].payload["meterValue"][0]["sampledValue"]
    (soc,) = [v for v in values if v["measurand"] == "SoC"]
    assert isinstance(soc["customData"]["packTemperatureCelsius"], float)
