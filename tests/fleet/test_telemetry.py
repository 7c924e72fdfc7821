"""Committed CSMS telemetry reaches the fleet: session matching, SoC beliefs, ISO 15118 needs, unplugging."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from chargers.models import EvChargingNeeds, Transaction
from chargers.telemetry import TelemetryUpdate, telemetry_committed
from fleet import selectors
from fleet import telemetry as telemetry_module
from fleet.models import (
    DeparturePlan,
    PackTemperature,
    PlanSource,
    PlugSession,
    SocEstimate,
    SocSource,
    VehicleState,
)
from fleet.numerics.allocation import allocate
from fleet.telemetry import Reading, ReadingCoalescer, telemetry_ingest
from tests.chargers.factories import StationFactory
from tests.fleet.factories import T0, VehicleFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def plugged() -> dict:
    station = StationFactory.create(station_id="depot-7")
    vehicle = VehicleFactory.create(id_token="CARD-42", usable_capacity_wh=60_000)
    tx = Transaction.objects.create(
        station=station, transaction_id="tx-1", evse_id=1, id_token="CARD-42", started_at=T0, active=True
    )
    return {"station": station, "vehicle": vehicle, "tx": tx}


def meter(at_min: int, **values: int) -> Reading:
    return Reading(
        station_id="depot-7",
        kind="meter",
        timestamp=T0 + timedelta(minutes=at_min),
        evse_id=1,
        values=values,
        transaction_id="tx-1",
    )


def test_a_transaction_with_a_known_token_opens_a_session_and_records_soc(plugged: dict) -> None:
    # when the first meter reading of the transaction arrives with SoC 50 % and the registers
    telemetry_ingest(readings=[meter(1, SoC=50, **{"Energy.Active.Import.Register": 1_000})])
    # then the vehicle is plugged in at that EVSE, linked to the transaction, with a reported SoC
    session = selectors.open_session(plugged["vehicle"].id)
    assert session is not None
    assert (session.station_id, session.evse_id, session.matched_by) == ("depot-7", 1, "id_token")
    assert session.charger_transaction == plugged["tx"]
    belief = selectors.latest_soc(plugged["vehicle"].id)
    assert belief is not None
    assert (belief.soc_wh, belief.source, belief.import_register_wh) == (30_000, SocSource.REPORTED, 1_000)


def test_unchanged_soc_is_advanced_by_the_meter_and_a_change_resets(plugged: dict) -> None:
    imp = "Energy.Active.Import.Register"
    telemetry_ingest(readings=[meter(1, SoC=50, **{imp: 1_000})])
    # the car still says 50 %, the meter says 500 Wh more went in: 30,000 + 500 * 0.9
    telemetry_ingest(readings=[meter(2, SoC=50, **{imp: 1_500})])
    belief = selectors.latest_soc(plugged["vehicle"].id)
    assert belief is not None
    assert (belief.source, belief.soc_wh) == (SocSource.METERED, 30_450)
    # the car reports 51 %: the chain restarts from the report
    telemetry_ingest(readings=[meter(3, SoC=51, **{imp: 1_700})])
    belief = selectors.latest_soc(plugged["vehicle"].id)
    assert belief is not None
    assert (belief.source, belief.soc_wh) == (SocSource.REPORTED, 30_600)
    # and the same batch delivered twice adds nothing
    before = SocEstimate.objects.count()
    telemetry_ingest(readings=[meter(3, SoC=51, **{imp: 1_700})])
    assert SocEstimate.objects.count() == before


def test_iso15118_needs_set_v2x_limits_and_a_station_departure(plugged: dict) -> None:
    EvChargingNeeds.objects.create(
        station=plugged["station"],
        evse_id=1,
        received_at=T0 + timedelta(seconds=30),
        requested_energy_transfer="AC_BPT",
        departure_time=T0 + timedelta(hours=8),
        max_charge_power_w=7_400,
        max_discharge_power_w=5_000,
        target_soc=80,
        payload={},
    )
    telemetry_ingest(readings=[meter(1, SoC=40)])
    telemetry_ingest(readings=[meter(2, SoC=41)])
    session = selectors.open_session(plugged["vehicle"].id)
    assert session is not None
    assert (session.ev_max_charge_w, session.ev_max_discharge_w) == (7_400, 5_000)
    plans = DeparturePlan.objects.filter(vehicle=plugged["vehicle"], source=PlanSource.STATION)
    assert plans.count() == 1
    snap = selectors.vehicle_snapshot(plugged["vehicle"], at=T0 + timedelta(minutes=3))
    assert snap is not None
    assert (snap.departure, snap.target_wh, snap.max_discharge_w) == (T0 + timedelta(hours=8), 48_000, 5_000)


def test_an_unknown_token_opens_nothing(plugged: dict) -> None:
    plugged["tx"].id_token = "STRANGER"
    plugged["tx"].save()
    assert telemetry_ingest(readings=[meter(1, SoC=50)]) == 0
    assert not PlugSession.objects.exists()


def test_the_session_closes_when_the_transaction_ends_or_the_connector_is_free(plugged: dict) -> None:
    telemetry_ingest(readings=[meter(1, SoC=50)])
    Transaction.objects.filter(pk=plugged["tx"].pk).update(active=False, ended_at=T0 + timedelta(hours=1))
    telemetry_ingest(readings=[meter(61, SoC=60)])
    assert selectors.open_session(plugged["vehicle"].id) is None
    # a second plug-in, then the connector reports Available
    Transaction.objects.filter(pk=plugged["tx"].pk).update(active=True)
    PlugSession.objects.update(ended_at=None)
    telemetry_ingest(readings=[Reading("depot-7", "status", T0 + timedelta(hours=2), evse_id=1, status="Available")])
    assert selectors.open_session(plugged["vehicle"].id) is None


def test_the_csms_hook_feeds_the_fleet_after_commit(plugged: dict, django_capture_on_commit_callbacks) -> None:
    update = TelemetryUpdate(
        "depot-7",
        "meter",
        T0 + timedelta(minutes=1),
        evse_id=1,
        values={"SoC": 55, "Energy.Active.Import.Register": 2_000, "Power.Active.Import": 7_000},
        transaction_id="tx-1",
    )
    with django_capture_on_commit_callbacks(execute=True):
        telemetry_committed(updates=[update])
    state = VehicleState.objects.get(vehicle=plugged["vehicle"])
    assert state.soc_wh == 33_000
    assert state.plugged_in is True


def test_a_tokenless_plug_in_at_a_depot_bay_is_the_bays_last_vehicle(plugged: dict) -> None:
    # given the vehicle used EVSE 1 of depot-7 before (an earlier, closed session)
    telemetry_ingest(readings=[meter(1, SoC=50)])
    PlugSession.objects.update(ended_at=T0 + timedelta(hours=1))
    # when a new transaction starts there with no id token (cable plugged in)
    Transaction.objects.create(
        station=plugged["station"], transaction_id="tx-2", evse_id=1, started_at=T0 + timedelta(hours=10)
    )
    reading = Reading("depot-7", "meter", T0 + timedelta(hours=10, minutes=1), 1, {"SoC": 30}, "", "tx-2")
    telemetry_ingest(readings=[reading])
    # then the same vehicle is plugged in again, matched by its bay
    session = selectors.open_session(plugged["vehicle"].id)
    assert session is not None
    assert (session.transaction_id, session.matched_by) == ("tx-2", "bay")


def test_readings_from_foreign_stations_cost_a_few_queries(plugged: dict, django_assert_max_num_queries) -> None:
    # given 50 stations the fleet never used, each with a transaction carrying a token no vehicle has
    for n in range(50):
        station = StationFactory.create(station_id=f"public-{n}")
        Transaction.objects.create(station=station, transaction_id=f"p-{n}", evse_id=1, id_token=f"CARD-X{n}")
    readings = [
        Reading(f"public-{n}", "meter", T0, 1, {"SoC": 50, "Energy.Active.Import.Register": 10}, "", f"p-{n}")
        for n in range(50)
    ]
    # when their batch is ingested, then it costs at most three queries and touches nothing
    with django_assert_max_num_queries(3):
        assert telemetry_ingest(readings=readings) == 0


# --- pack temperature and SoC from the EV's own data ---------------------------------------------------------------


def ev_update(
    at_min: int, temp_mc: int, *, unit: str = "mCelsius", registers: dict[str, int] | None = None, **values: int
) -> TelemetryUpdate:
    """A committed meter reading as the CSMS hands it on: the EV's pack temperature under "Temperature@EV"."""
    return TelemetryUpdate(
        "depot-7",
        "meter",
        T0 + timedelta(minutes=at_min),
        evse_id=1,
        values={"Temperature@EV": temp_mc, **values, **(registers or {})},
        units={"Temperature@EV": unit},
        transaction_id="tx-1",
    )


def test_the_reported_pack_temperature_is_stored_and_derates_the_cars_allocation(
    plugged: dict, django_capture_on_commit_callbacks
) -> None:
    # given a car at 50 % whose station reports its pack at 47.5 degC (MeterValues, Temperature at location EV)
    with django_capture_on_commit_callbacks(execute=True):
        telemetry_committed(updates=[ev_update(1, 47_500, SoC=50, registers={"Energy.Active.Import.Register": 1_000})])
    vehicle = plugged["vehicle"]
    vehicle.refresh_from_db()
    # then the reading is stored with its source and instant, and is the vehicle's temperature now
    row = PackTemperature.objects.get(vehicle=vehicle)
    assert (row.temperature_c, row.source, row.valid_at) == (47.5, "reported", T0 + timedelta(minutes=1))
    assert (vehicle.pack_temperature_c, vehicle.pack_temperature_at) == (47.5, T0 + timedelta(minutes=1))
    # and when the fleet is asked for 11 kW of discharge, the car gives what its pack allows at 47.5 degC:
    # full power up to 40 degC, none at 55 degC -> (55 - 47.5) / 15 = half of its 11,000 W
    snapshot = selectors.vehicle_snapshot(vehicle, at=T0 + timedelta(minutes=2))
    assert snapshot is not None
    allocation = allocate([snapshot], -11_000, now=T0 + timedelta(minutes=2))
    assert allocation.power_w.tolist() == [-5_500]


def test_an_over_temperature_car_is_taken_out_of_discharge(plugged: dict) -> None:
    # given a car discharging normally at 30 degC
    telemetry_ingest(readings=[meter(1, SoC=50, **{"Temperature@EV": 30_000})])
    vehicle = plugged["vehicle"]
    snapshot = selectors.vehicle_snapshot(vehicle, at=T0 + timedelta(minutes=2))
    assert snapshot is not None
    assert allocate([snapshot], -11_000, now=T0 + timedelta(minutes=2)).power_w.tolist() == [-11_000]
    # when its pack reaches 56 degC (beyond the 55 degC where discharge derates to nothing)
    telemetry_ingest(readings=[meter(3, SoC=50, **{"Temperature@EV": 56_000})])
    vehicle.refresh_from_db()
    hot = selectors.vehicle_snapshot(vehicle, at=T0 + timedelta(minutes=4))
    assert hot is not None
    # then it discharges nothing, whatever the fleet is asked
    allocation = allocate([hot], -11_000, now=T0 + timedelta(minutes=4))
    assert allocation.power_w.tolist() == [0]
    assert not allocation.feasible


def test_a_temperature_in_kelvin_is_converted_and_an_implausible_one_is_ignored(
    plugged: dict, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        telemetry_committed(updates=[ev_update(1, 308_150, unit="mK", SoC=50)])
    vehicle = plugged["vehicle"]
    vehicle.refresh_from_db()
    assert vehicle.pack_temperature_c == pytest.approx(35.0)
    # a broken sensor's 400 degC is refused: the last good value stays
    telemetry_ingest(readings=[meter(2, SoC=50, **{"Temperature@EV": 400_000})])
    vehicle.refresh_from_db()
    assert vehicle.pack_temperature_c == pytest.approx(35.0)
    assert PackTemperature.objects.filter(vehicle=vehicle).count() == 1


def test_an_unchanged_temperature_is_stored_once_a_minute_and_a_repeat_never(plugged: dict) -> None:
    # given the same reading twice, then the same value 30 s later
    reading = meter(1, SoC=50, **{"Temperature@EV": 31_200})
    telemetry_ingest(readings=[reading, reading])
    later = Reading.from_message({**reading.as_message(), "timestamp": (T0 + timedelta(seconds=90)).isoformat()})
    telemetry_ingest(readings=[later])
    # then one row; the same value a minute after the stored one is stored again
    assert PackTemperature.objects.count() == 1
    telemetry_ingest(readings=[meter(2, SoC=50, **{"Temperature@EV": 31_200})])
    assert PackTemperature.objects.count() == 2


def test_a_dc_stations_iso15118_soc_is_taken_when_its_meter_values_carry_none(plugged: dict) -> None:
    # given an OCPP 2.1 NotifyEVChargingNeeds whose DC charging parameters carry the EV's SoC (42 %)
    EvChargingNeeds.objects.create(
        station=plugged["station"],
        evse_id=1,
        received_at=T0 + timedelta(seconds=30),
        requested_energy_transfer="DC_BPT",
        payload={"requestedEnergyTransfer": "DC_BPT", "dcChargingParameters": {"evMaxCurrent": 200,
                 "evMaxVoltage": 500, "stateOfCharge": 42}},
    )  # fmt: skip
    # when the station's next meter values carry only the registers
    telemetry_ingest(readings=[meter(1, **{"Energy.Active.Import.Register": 5_000})])
    # then the EV's SoC is a report, with the registers it can be advanced from
    belief = selectors.latest_soc(plugged["vehicle"].id)
    assert belief is not None
    assert (belief.soc_wh, belief.source, belief.import_register_wh) == (25_200, SocSource.REPORTED, 5_000)
    # and the meter advances it: 1,000 Wh more at eta_c 0.9
    telemetry_ingest(readings=[meter(2, **{"Energy.Active.Import.Register": 6_000})])
    advanced = selectors.latest_soc(plugged["vehicle"].id)
    assert advanced is not None
    assert (advanced.soc_wh, advanced.source) == (26_100, SocSource.METERED)


def test_a_reading_stamped_far_ahead_of_the_server_clock_is_not_applied(plugged: dict, caplog) -> None:
    # Given a station whose clock runs a day ahead, then is corrected
    now = timezone.now()
    ahead = Reading(station_id="depot-7", kind="meter", timestamp=now + timedelta(days=1), evse_id=1,
                    values={"SoC": 90, "Temperature@EV": 45_000}, transaction_id="tx-1")  # fmt: skip
    right = Reading(station_id="depot-7", kind="meter", timestamp=now, evse_id=1,
                    values={"SoC": 40, "Temperature@EV": 25_000}, transaction_id="tx-1")  # fmt: skip
    # When both readings are ingested
    telemetry_ingest(readings=[ahead])
    telemetry_ingest(readings=[right])
    # Then only the one placed in time is the vehicle's SoC and temperature, and the other one is logged
    belief = selectors.latest_soc(plugged["vehicle"].id, at=now + timedelta(days=2))
    assert belief is not None
    assert belief.soc_wh == 24_000
    plugged["vehicle"].refresh_from_db()
    assert plugged["vehicle"].pack_temperature_c == 25.0
    assert any("ahead of this server's clock" in r.getMessage() for r in caplog.records)


def _status(station_id: str, at_s: int, status: str) -> dict:
    return Reading(station_id, "status", T0 + timedelta(seconds=at_s), evse_id=1, status=status).as_message()


def _meter_message(station_id: str, tx: str, at_s: int, **values: int) -> dict:
    when = T0 + timedelta(seconds=at_s)
    return Reading(station_id, "meter", when, evse_id=1, values=values, transaction_id=tx).as_message()


def test_the_ingest_window_hands_on_the_newest_reading_of_each_evse_and_every_status() -> None:
    # Given a coalescer whose window is flushed by hand
    published: list[list[dict]] = []
    coalescer = ReadingCoalescer(window_s=3600, publish=published.append)
    imp = "Energy.Active.Import.Register"
    # When one window brings three register readings of one transaction (the newest second), one SoC reading,
    # another station's reading and two status changes
    newest = _meter_message("a", "tx-a", 5, **{imp: 1_500})
    coalescer.add(
        [_meter_message("a", "tx-a", 1, **{imp: 1_000}), newest, _meter_message("a", "tx-a", 3, **{imp: 1_200})]
    )
    with_soc = _meter_message("a", "tx-a", 2, SoC=50, **{imp: 1_100})
    other = _meter_message("b", "tx-b", 4, **{imp: 9_000})
    statuses = [_status("a", 6, "Available"), _status("a", 7, "Occupied")]
    coalescer.add([with_soc, other, *statuses])
    carried = coalescer.flush()
    # Then one message carries the newest reading per station, transaction and measurands, and every status
    assert carried == 5
    assert len(published) == 1
    assert sorted(published[0], key=lambda m: m["timestamp"]) == [with_soc, other, newest, *statuses]
    # and the next window starts empty
    assert coalescer.flush() == 0
    assert len(published) == 1


def test_a_window_of_readings_leaves_the_cars_soc_where_every_reading_would(plugged: dict) -> None:
    # Given two identical cars charging at 72 kW (DC) on two stations, each station reporting every second
    second = VehicleFactory.create(id_token="CARD-43", usable_capacity_wh=60_000)
    Transaction.objects.create(
        station=StationFactory.create(station_id="depot-8"),
        transaction_id="tx-2",
        evse_id=1,
        id_token="CARD-43",
        started_at=T0,
        active=True,
    )

    def stream(station_id: str, tx: str) -> list[dict]:
        # 20 Wh a second into a 60 kWh pack at 50 %: the car's whole-percent SoC moves on every 33 s
        return [
            _meter_message(
                station_id,
                tx,
                t,
                SoC=(30_000 + 20 * t * 9 // 10) * 100 // 60_000,
                **{"Energy.Active.Import.Register": 20 * t},
            )
            for t in range(0, 100)
        ]

    # When the first car's readings are ingested one by one and the second's through 2-s windows
    for message in stream("depot-7", "tx-1"):
        telemetry_ingest(readings=[Reading.from_message(message)])
    coalescer = ReadingCoalescer(
        window_s=3600,
        publish=lambda batch: telemetry_ingest(readings=[Reading.from_message(m) for m in batch]),
    )
    for n, message in enumerate(stream("depot-8", "tx-2"), start=1):
        coalescer.add([message])
        if n % 2 == 0:
            coalescer.flush()
    coalescer.flush()
    # Then both cars end with the same SoC, give or take the energy metered in one window (40 Wh), from half the
    # SoC rows
    one, two = selectors.latest_soc(plugged["vehicle"].id), selectors.latest_soc(second.id)
    assert one is not None
    assert two is not None
    assert abs(one.soc_wh - two.soc_wh) <= 40
    assert abs(one.soc_wh - (30_000 + 20 * 99 * 9 // 10)) <= 600  # and near the truth (whole-percent reports)
    assert (
        SocEstimate.objects.filter(vehicle=second).count() * 2
        <= SocEstimate.objects.filter(vehicle=plugged["vehicle"]).count() + 1
    )


def test_with_a_broker_the_csms_hook_hands_readings_to_the_window_not_a_task_per_batch(monkeypatch) -> None:
    # Given a broker (tasks not run eagerly) and an ingest window
    published: list[list[dict]] = []
    monkeypatch.setattr(telemetry_module, "COALESCER", ReadingCoalescer(window_s=3600, publish=published.append))
    monkeypatch.setattr(telemetry_module.jobs, "tasks_run_eagerly", lambda: False)
    sent: list[tuple] = []
    monkeypatch.setattr(telemetry_module.jobs, "task_enqueue_background", lambda **kw: sent.append(kw))
    update = TelemetryUpdate(
        "depot-7", "meter", T0, evse_id=1, values={"Energy.Active.Import.Register": 1}, transaction_id="tx-1"
    )
    # When two batches are committed within the window
    telemetry_module.on_telemetry_committed([update])
    telemetry_module.on_telemetry_committed([update])
    # Then no task was sent per batch, and the window holds the reading once
    assert sent == []
    assert telemetry_module.COALESCER.flush() == 1
    assert len(published) == 1


def test_a_status_change_is_handed_on_at_once_and_meter_readings_after_the_window() -> None:
    # Given a coalescer with a 2-s window
    published: list[list[dict]] = []
    coalescer = ReadingCoalescer(window_s=2.0, publish=published.append)
    # When a meter reading arrives, then a connector goes free 0.1 s later
    coalescer.add([_meter_message("a", "tx-a", 1, **{"Energy.Active.Import.Register": 1})])
    time.sleep(0.1)
    coalescer.add([_status("a", 2, "Available")])
    # Then both are handed on well before the window ends
    deadline = time.monotonic() + 1.0
    while not published and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [len(batch) for batch in published] == [2]
    # And a meter reading alone waits for its window
    coalescer.add([_meter_message("a", "tx-a", 3, **{"Energy.Active.Import.Register": 2})])
    time.sleep(1.0)
    assert len(published) == 1
    time.sleep(1.5)
    assert [len(batch) for batch in published] == [2, 1]


def test_at_a_graceful_exit_the_readings_held_in_the_window_reach_the_broker(monkeypatch) -> None:
    # Given a reading held in a long window, and a publisher on kombu's in-memory broker
    from celery import Celery

    from fleet import jobs

    app = Celery(broker="memory://", set_as_current=False)
    publisher = jobs.BackgroundPublisher(app=app)
    monkeypatch.setattr(telemetry_module.jobs, "PUBLISHER", publisher)
    window = ReadingCoalescer(window_s=3600, publish=telemetry_module._publish_ingest)
    monkeypatch.setattr(telemetry_module, "COALESCER", window)
    window.add([_meter_message("a", "tx-a", 1, SoC=55)])
    # When the process exits gracefully
    left = telemetry_module.held_readings_hand_on(timeout_s=5.0)
    # Then nothing is left behind: the reading is in the broker's queue as an ingest task
    assert left == 0
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue("celery").get(timeout=2)
        assert message.headers["task"] == jobs.INGEST_TELEMETRY
        assert message.decode()[0][0][0]["values"] == {"SoC": 55}
    publisher.stop()


def test_an_exit_waits_no_longer_than_its_bound_for_a_broker_that_is_away(monkeypatch, caplog) -> None:
    # Given a reading held in the window and a broker nobody answers for
    from celery import Celery

    from fleet import jobs

    app = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_connection_timeout = 1
    publisher = jobs.BackgroundPublisher(app=app)
    monkeypatch.setattr(telemetry_module.jobs, "PUBLISHER", publisher)
    window = ReadingCoalescer(window_s=3600, publish=telemetry_module._publish_ingest)
    monkeypatch.setattr(telemetry_module, "COALESCER", window)
    window.add([_meter_message("a", "tx-a", 1, SoC=55)])
    # When the process exits
    started = time.monotonic()
    left = telemetry_module.held_readings_hand_on(timeout_s=0.5)
    # Then it gives up after its bound, saying what it left
    assert time.monotonic() - started < 2.0
    assert left == 1
    assert "not handed to the broker at exit" in caplog.text
    publisher.stop()


def test_an_exit_with_nothing_held_returns_at_once() -> None:
    started = time.monotonic()
    assert telemetry_module.held_readings_hand_on(timeout_s=5.0) == 0
    assert time.monotonic() - started < 0.5
