"""Committed CSMS telemetry reaches the fleet: session matching, SoC beliefs, ISO 15118 needs, unplugging."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chargers.models import EvChargingNeeds, Transaction
from chargers.telemetry import TelemetryUpdate, telemetry_committed
from fleet import selectors
from fleet.models import DeparturePlan, PlanSource, PlugSession, SocEstimate, SocSource, VehicleState
from fleet.telemetry import Reading, telemetry_ingest
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
