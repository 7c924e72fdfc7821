"""``regulation replay`` end to end: a live CSMS, simulated edge agents, the real intake, dispatch and fan-out."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from chargers.models import MeterValue
from markets.models import Product
from tests.chargers.factories import StationFactory
from vpp.models import Dispatch, DispatchCommand
from vpp.replay.harness import meter_values_await
from vpp.replay.results import replay_rows

SIGNAL = Path(__file__).resolve().parents[3] / "markets" / "data" / "pjm-regd-test-signal-40min.csv"


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_short_accelerated_replay_follows_the_signal_above_the_floor_and_is_scored(tmp_path):
    # Given three simulated vehicles and the RegD test signal, 640 s of it replayed 20x faster
    out = tmp_path / "result.csv"
    stdout = io.StringIO()
    # When the replay runs end to end
    call_command(
        "regulation",
        "replay",
        signal=str(SIGNAL),
        vehicles=3,
        out=str(out),
        speed=20.0,
        duration=640,
        keep=True,  # the dispatch records are looked at below (tests/vpp/replay/test_cleanup.py: the default)
        stdout=stdout,
    )
    text = stdout.getvalue()
    # Then one row per signal value (every 2 s of signal time) was written
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 321
    assert list(rows[0])[:5] == ["time", "signal", "fleet_setpoint_kw", "fleet_response_kw", "min_soc_pct"]
    # And the stations were commanded and answered through the real dispatch path
    dispatches = Dispatch.objects.filter(vehicles=3)
    assert dispatches.count() >= 300
    assert DispatchCommand.objects.filter(dispatch__in=dispatches, answer="Accepted").count() >= 0.9 * 3 * 300
    # And the floor (20 %) was never crossed, and the score was computed
    socs = [int(r["min_soc_pct"]) for r in rows if r["min_soc_pct"]]
    assert socs
    assert min(socs) >= 20
    assert "composite" in text
    assert "worst case, response read at each update instant: composite" in text
    # And the fleet followed the setpoint: metered power tracks it once the first meter values are in
    setpoint = np.array([float(r["fleet_setpoint_kw"]) for r in rows[40:]])
    response = np.array([float(r["fleet_response_kw"]) for r in rows[40:]])
    assert np.corrcoef(setpoint, response)[0, 1] > 0.8


@pytest.mark.django_db
def test_a_retransmitted_meter_value_is_counted_once():
    # Given a station whose power reading was stored twice (the station resent the same MeterValues)
    station = StationFactory.create()
    at = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    for _ in range(2):
        MeterValue.objects.create(
            station=station, evse_id=1, timestamp=at, received_at=at, measurand="Power.Active.Import", value=5_000,
            unit="W",
        )  # fmt: skip
    product = Product.objects.get(operator__code="pjm", code="reg-d")
    times = np.array([(at + timedelta(seconds=s)).timestamp() for s in (1, 2)])
    # When the replay's rows are computed from the stored data
    rows = replay_rows(
        product=product, portfolio="x", station_ids=[station.station_id], times_s=times, signal=np.zeros(2)
    )
    # Then the fleet power is the reading once, and the duplicate is reported
    assert rows.fleet_power_w.tolist() == [5_000.0, 5_000.0]
    assert rows.duplicates == 1


@pytest.mark.django_db
def test_the_replay_waits_for_every_station_s_meter_values_to_reach_the_end():
    # Given two stations, only one of which has reported up to the end of the replay
    end = datetime(2026, 1, 1, 12, 40, 0, tzinfo=UTC)
    done, late = StationFactory.create(), StationFactory.create()
    for station, at in ((done, end + timedelta(seconds=1)), (late, end - timedelta(seconds=30))):
        MeterValue.objects.create(
            station=station, evse_id=1, timestamp=at, received_at=at, measurand="Power.Active.Import", value=1, unit="W"
        )
    ids = [done.station_id, late.station_id]
    # When the replay waits for them (not long: the late one's queued values do not arrive)
    caught_up = meter_values_await(station_ids=ids, since=end, timeout_s=0.0)
    # Then it reports that only one caught up; once the late one's value lands, both have
    assert caught_up == 1
    MeterValue.objects.create(
        station=late, evse_id=1, timestamp=end, received_at=end, measurand="Power.Active.Import", value=1, unit="W"
    )
    assert meter_values_await(station_ids=ids, since=end, timeout_s=0.0) == 2


@pytest.mark.django_db
def test_the_response_to_a_value_is_read_mid_interval_and_at_the_update_instant_for_the_worst_case():
    # Given a station drawing 1 kW until a value is sent at t, then 3 kW from 0.3 s after it (its answer metered)
    station = StationFactory.create()
    t = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    for offset, watts in ((-1.7, 1_000), (-0.7, 1_000), (0.3, 3_000), (1.3, 3_000)):
        at = t + timedelta(seconds=offset)
        MeterValue.objects.create(
            station=station, evse_id=1, timestamp=at, received_at=at, measurand="Power.Active.Import", value=watts,
            unit="W",
        )  # fmt: skip
    product = Product.objects.get(operator__code="pjm", code="reg-d")
    times = np.array([t.timestamp()])

    def power(sample_at_s: float) -> float:
        rows = replay_rows(
            product=product, portfolio="x", station_ids=[station.station_id], times_s=times, signal=np.zeros(1),
            sample_at_s=sample_at_s,
        )  # fmt: skip
        return float(rows.fleet_power_w[0])

    # When the response to the value is read at its instant, and 1 s into its 2-s interval
    # Then at the instant it is still the answer to the previous value; mid-interval it is the answer to this one
    assert power(0.0) == 1_000.0
    assert power(1.0) == 3_000.0
