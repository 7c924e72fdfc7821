"""The EV's own data in meter values (location EV: SoC, pack temperature) reaches the layers above the CSMS."""

from __future__ import annotations

from datetime import UTC, datetime

from chargers.batch import BatchContext
from chargers.handlers.meter_values import meter_rows_queue
from chargers.jobs import StationRef

NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
STATION = StationRef(pk=1, station_id="depot-7", version="2.1")


def sampled(measurand: str, value: float, unit: str, location: str = "") -> dict[str, object]:
    row: dict[str, object] = {"value": value, "measurand": measurand, "unitOfMeasure": {"unit": unit}}
    if location:
        row["location"] = location
    return row


def test_the_evs_soc_and_pack_temperature_are_passed_on_apart_from_the_stations_own_temperature() -> None:
    # given a meter value with the EV's SoC and pack temperature (location EV) and the station's body temperature
    ctx = BatchContext(NOW)
    values = [
        sampled("SoC", 64, "Percent", "EV"),
        sampled("Temperature", 41.5, "Celsius", "EV"),
        sampled("Temperature", 30.0, "Celsius", "Body"),
        sampled("Energy.Active.Import.Register", 12_500, "Wh"),
    ]
    # when it is queued for storage
    update = meter_rows_queue(ctx, STATION, [{"timestamp": NOW.isoformat(), "sampledValue": values}], evse_id=1,
                              source="MeterValues")  # fmt: skip
    # then every row is stored, and the feed carries the EV's SoC and pack temperature (m degC), not the body's
    assert len(ctx.meter_values) == 4
    assert update is not None
    assert update.values == {"SoC": 64, "Temperature@EV": 41_500, "Energy.Active.Import.Register": 12_500}
    assert update.units["Temperature@EV"] == "mCelsius"


def test_the_edge_agents_pack_temperature_is_read_from_its_soc_samples_custom_data() -> None:
    # given an OCPP 2.x meter value (no Temperature measurand there) whose SoC sample carries the pack temperature
    ctx = BatchContext(NOW)
    soc = sampled("SoC", 64.2, "Percent")
    soc["customData"] = {"vendorId": "org.openv2g.ev", "packTemperatureCelsius": 38.7}
    update = meter_rows_queue(ctx, STATION, [{"timestamp": NOW.isoformat(), "sampledValue": [soc]}], evse_id=1,
                              source="TransactionEvent")  # fmt: skip
    # then the feed carries it in m degC beside the SoC
    assert update is not None
    assert update.values == {"SoC": 64, "Temperature@EV": 38_700}


def test_a_pack_temperature_beyond_physics_is_dropped_and_the_row_kept() -> None:
    # given a station whose customData claims a pack temperature so large that scaling it to m degC would overflow
    ctx = BatchContext(NOW)
    soc = sampled("SoC", 64.2, "Percent")
    soc["customData"] = {"vendorId": "org.openv2g.ev", "packTemperatureCelsius": 1e306}
    # when it is queued for storage
    update = meter_rows_queue(ctx, STATION, [{"timestamp": NOW.isoformat(), "sampledValue": [soc]}], evse_id=1,
                              source="MeterValues")  # fmt: skip
    # then nothing raises (the batch lives on), the SoC row is stored and no temperature is passed on
    assert len(ctx.meter_values) == 1
    assert update is not None
    assert update.values == {"SoC": 64}
