"""Scoring and settlement from stored signal and meter values, retransmissions, attribution, reconciliation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest

from chargers.models import MeterValue
from fleet.models import Fleet, Organisation, PackTemperature, PlugSession, SocEstimate, SocSource, Vehicle
from markets.regulation import scoring
from markets.regulation.models import PerformanceScoreRecord, RegulationSignal, Settlement, SignalSource
from markets.regulation.performance import performance_score_compute, regulation_trace
from markets.regulation.reconciliation import reconciliation_report
from markets.regulation.services import (
    RegulationError,
    SignalConflict,
    energy_price_record,
    regulation_price_record,
    regulation_signal_import,
    regulation_signal_record,
    reserve_deployment_record,
)
from markets.regulation.settlement import SettlementError
from markets.regulation.settling import regulation_hour_settle, settlement_compute
from markets.regulation.signals import read_signal_csv
from tests.markets.regulation.data import (
    HOUR_START,
    award_for,
    regulation_product,
    stations,
    store_following,
    store_signal,
    triangle,
)
from tests.markets.regulation.test_scoring import REGD_FILE

pytestmark = pytest.mark.django_db

D = Decimal
CAPACITY_W = 1_000_000


@pytest.fixture
def product():
    return regulation_product()


@pytest.fixture
def award(product):
    return award_for(product, HOUR_START, awarded_w=CAPACITY_W, price="20.00")


@pytest.fixture
def prices(product):
    regulation_price_record(
        product=product, interval_start=HOUR_START, performance_price=D("2.50"), mileage_ratio=D("3.2")
    )
    energy_price_record(
        operator_id=product.operator_id, interval_start=HOUR_START, interval_minutes=60, price=D("30.00")
    )


# --- signal intake -------------------------------------------------------------------------------------------------


def test_a_retransmitted_signal_value_is_stored_once(product):
    row, created = regulation_signal_record(
        product=product, portfolio="default", at=HOUR_START, value="0.12345", source=SignalSource.UTILITY_API
    )
    again, created_again = regulation_signal_record(
        product=product, portfolio="default", at=HOUR_START, value=0.12345, source=SignalSource.UTILITY_API
    )
    assert (created, created_again) == (True, False)
    assert again.pk == row.pk
    assert RegulationSignal.objects.count() == 1


def test_a_different_value_for_a_known_instant_is_refused(product):
    regulation_signal_record(product=product, portfolio="default", at=HOUR_START, value="0.5", source="utility_api")
    with pytest.raises(SignalConflict, match=r"already 0\.50000"):
        regulation_signal_record(product=product, portfolio="default", at=HOUR_START, value="0.4", source="utility_api")


@pytest.mark.parametrize("value", ["1.2", "-1.00001", "nan", "abc"])
def test_signal_values_outside_the_normalised_range_are_refused(product, value):
    with pytest.raises(RegulationError):
        regulation_signal_record(product=product, portfolio="default", at=HOUR_START, value=value, source="utility_api")


def test_the_regd_file_replays_into_stored_signal_rows_once(product):
    trace = read_signal_csv(REGD_FILE)
    assert regulation_signal_import(product=product, portfolio="default", trace=trace, start=HOUR_START) == 1201
    assert regulation_signal_import(product=product, portfolio="default", trace=trace, start=HOUR_START) == 0
    last = RegulationSignal.objects.order_by("-at").first()
    assert last is not None
    assert last.at == HOUR_START + timedelta(seconds=2400)
    assert last.value == D("0.90382")


# --- response measurement and scoring ------------------------------------------------------------------------------


def test_a_fleet_following_the_signal_exactly_scores_one(product, award):
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W)
    record = performance_score_compute(product=product, period_start=HOUR_START)
    assert (record.accuracy, record.delay, record.precision, record.composite) == (D(1), D(1), D(1), D(1))
    assert record.passed
    assert record.rows == 391
    assert record.period_end == HOUR_START + timedelta(hours=1)
    assert record.stations == 2
    assert record.meter_values == 2 * 1951 * 2  # 2 stations x readings at 0..3900 s x 2 power measurands
    assert record.signal_mileage == D("72.00000")  # 1800 steps of 0.04 over the hour's 2-s signal


def test_a_fleet_20_seconds_late_scores_the_delay_computed_by_hand(product, award):
    # given a 10 MW resource (the pure hand case: +-10 MW triangle, period 20 rows) 20 s late
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=10_000_000, lag_s=20)
    record = performance_score_compute(product=product, period_start=HOUR_START, capacity_w=10_000_000)
    # then k* = 2 in every window: d = 10 s, delay = 290/300; precision (18 x 0.2 + 2 x 1) / 20 = 0.28
    assert record.delay == D("0.966667")
    assert record.accuracy == D("1.000000")
    assert record.precision == D("0.280000")
    assert not record.passed


def test_a_half_amplitude_fleet_scores_half_precision(product, award):
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W, scale=0.5)
    record = performance_score_compute(product=product, period_start=HOUR_START)
    assert record.precision == D("0.500000")


def test_retransmitted_meter_values_do_not_change_the_score_or_the_energy(product, award, prices):
    # given a perfectly following fleet whose stations resent 500 readings (stored twice by the CSMS)
    store_signal(product, HOUR_START)
    rows = store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W, lag_s=10)
    clean = performance_score_compute(product=product, period_start=HOUR_START)
    clean_fields = (clean.accuracy, clean.delay, clean.precision, clean.meter_values)
    clean_settlement = settlement_compute(award=award, period_start=HOUR_START)
    clean_energy = (clean_settlement.import_wh, clean_settlement.export_wh, clean_settlement.net)
    for row in rows[::31][:500]:
        row.pk = None
        row.received_at += timedelta(minutes=3)
    MeterValue.objects.bulk_create(rows[::31][:500])
    # when scored and settled again
    again = performance_score_compute(product=product, period_start=HOUR_START, recompute=True)
    settled = settlement_compute(award=award, period_start=HOUR_START, recompute=True)
    # then nothing is counted twice
    assert (again.accuracy, again.delay, again.precision, again.meter_values) == clean_fields
    assert again.duplicates_ignored > 0
    assert (settled.import_wh, settled.export_wh, settled.net) == clean_energy
    assert sum(line.duplicates_ignored for line in settled.lines.all()) == again.duplicates_ignored


def test_the_trace_puts_signal_and_response_on_10_s_rows(product, award):
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W)
    trace = regulation_trace(product=product, portfolio="default", start=HOUR_START, rows=391)
    expected = np.array([triangle(10 * i) for i in range(391)])
    assert trace.reg_mw == pytest.approx(expected)
    assert trace.response_mw == pytest.approx(expected, abs=1e-6)
    assert trace.fleet_power_w[0] == pytest.approx(CAPACITY_W)  # signal -1: both stations charge 500 kW


def test_scoring_refuses_an_hour_with_gaps_in_the_signal(product, award):
    store_signal(product, HOUR_START, span_s=1800)
    store_following(stations(1), HOUR_START, capacity_w=CAPACITY_W)
    with pytest.raises(RegulationError, match="signal incomplete"):
        performance_score_compute(product=product, period_start=HOUR_START)
    assert not PerformanceScoreRecord.objects.exists()


def test_scoring_refuses_an_hour_without_awarded_capacity(product):
    store_signal(product, HOUR_START)
    with pytest.raises(RegulationError, match="no regulation capacity"):
        performance_score_compute(product=product, period_start=HOUR_START)


# --- settlement ------------------------------------------------------------------------------------------------------


def test_an_hour_of_perfect_regulation_settles_to_the_cent_as_computed_by_hand(product, award, prices):
    # given two stations each following half of a 1 MW award on a triangle signal
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W)
    # when settled
    settlement = settlement_compute(award=award, period_start=HOUR_START)
    # then capacity 1 MW x $20 x 1.0 = 20.00; performance 1 x 3.2 x $2.50 x 1.0 = 8.00
    assert (settlement.capacity_credit, settlement.performance_credit) == (D("20.00"), D("8.00"))
    # each station imports and exports 500 kW x 1/4 (mean positive part of the triangle) x 1 h = 125,000 Wh
    assert (settlement.import_wh, settlement.export_wh) == (250_000, 250_000)
    assert settlement.energy_amount == D("0.00")
    # pack throughput per station 125,000 x 0.92 + 125,000 / 0.92 = 250,870 Wh -> $7.839688 (half-even), x 2
    assert settlement.exact["degradation"] == "15.679376"
    assert settlement.degradation_cost == D("15.68")
    assert settlement.net == D("12.32")
    lines = list(settlement.lines.order_by("station__station_id"))
    assert [line.net for line in lines] == [D("6.16"), D("6.16")]
    assert [line.pack_throughput_wh for line in lines] == [250_870, 250_870]


def test_lines_name_the_vehicle_and_owner_plugged_in_and_link_to_their_meter_values(product, award, prices):
    store_signal(product, HOUR_START)
    first, second = stations(2)
    store_following([first, second], HOUR_START, capacity_w=CAPACITY_W)
    owner = Organisation.objects.create(name="Acme Logistics", slug="acme")
    fleet = Fleet.objects.create(organisation=owner, name="vans")
    van = Vehicle.objects.create(
        fleet=fleet, name="VAN-7", model="e-Transit", usable_capacity_wh=68_000, ac_max_charge_w=11_000
    )
    PlugSession.objects.create(
        vehicle=van, station_id=first.station_id, evse_id=1, matched_by="manual", started_at=HOUR_START
    )
    settlement = settlement_compute(award=award, period_start=HOUR_START)
    line = settlement.lines.get(station=first)
    assert (line.vehicle, line.owner, line.vehicle_ref, line.owner_ref) == (van, owner, "VAN-7", "Acme Logistics")
    other = settlement.lines.get(station=second)
    assert (other.vehicle, other.owner_ref, other.vehicle_ref) == (None, "unassigned", f"{second.station_id}/1")
    used = MeterValue.objects.filter(
        station=first, measurand__startswith="Power", timestamp__gte=HOUR_START - timedelta(seconds=60)
    ).filter(timestamp__lt=HOUR_START + timedelta(seconds=3901))
    assert line.meter_count == used.count()
    assert (line.meter_first_id, line.meter_last_id) == (min(used.values_list("id", flat=True)), used.latest("id").id)


def test_settlement_is_idempotent_and_refuses_missing_prices(product, award):
    store_signal(product, HOUR_START)
    store_following(stations(1), HOUR_START, capacity_w=CAPACITY_W)
    with pytest.raises(SettlementError, match="no regulation prices"):
        settlement_compute(award=award, period_start=HOUR_START)
    regulation_price_record(product=product, interval_start=HOUR_START, performance_price=D(1), mileage_ratio=D(1))
    with pytest.raises(SettlementError, match="no energy price"):
        settlement_compute(award=award, period_start=HOUR_START)
    energy_price_record(operator_id=product.operator_id, interval_start=HOUR_START, interval_minutes=60, price=D(1))
    first = settlement_compute(award=award, period_start=HOUR_START)
    assert regulation_hour_settle(period_start=HOUR_START) == [first]
    assert Settlement.objects.count() == 1


def test_energy_is_settled_once_when_a_fleet_holds_two_awards_in_an_hour(product, award, prices):
    store_signal(product, HOUR_START)
    store_following(stations(1), HOUR_START, capacity_w=CAPACITY_W, fn=lambda t: 0.5)  # steady 500 kW export
    reserve = award_for(product.operator.products.get(code="sync-reserve"), HOUR_START, awarded_w=200_000, price="5.00")
    settlements = regulation_hour_settle(period_start=HOUR_START)
    by_award = {s.award_id: s for s in settlements}
    assert by_award[award.pk].export_wh == 500_000
    assert by_award[reserve.pk].export_wh == 0
    assert by_award[reserve.pk].capacity_credit == D("1.00")  # 0.2 MW x $5 x score 1 (not scored)
    assert by_award[award.pk].energy_amount == D("15.00")  # 0.5 MWh x $30


# --- reconciliation ------------------------------------------------------------------------------------------------


def test_settled_energy_reconciles_with_the_registers_within_a_tenth_of_a_percent(product, award, prices):
    store_signal(product, HOUR_START)
    store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W, lag_s=6)
    settlement_compute(award=award, period_start=HOUR_START)
    rows = reconciliation_report(start=HOUR_START, end=HOUR_START + timedelta(hours=1))
    assert len(rows) == 2
    for row in rows:
        assert row.agrees, row
        assert row.settled_import_wh > 100_000
        assert abs(row.import_check.relative or D(0)) <= D("0.001")


def test_reconciliation_flags_energy_the_registers_do_not_show(product, award, prices):
    store_signal(product, HOUR_START)
    (station,) = stations(1)
    store_following([station], HOUR_START, capacity_w=CAPACITY_W)
    # the meter's export register runs 1 % slow from the half hour on
    late = MeterValue.objects.filter(
        station=station, measurand="Energy.Active.Export.Register", timestamp__gte=HOUR_START + timedelta(minutes=30)
    )
    for reading in late:
        reading.value -= 1_300
        reading.save(update_fields=["value"])
    settlement_compute(award=award, period_start=HOUR_START)
    (row,) = reconciliation_report(start=HOUR_START, end=HOUR_START + timedelta(hours=1))
    assert row.import_check.agrees
    assert not row.export_check.agrees
    assert not row.agrees


def test_scores_match_the_pure_function_on_the_same_rows(product, award):
    store_signal(product, HOUR_START)
    store_following(stations(3), HOUR_START, capacity_w=CAPACITY_W, lag_s=14, scale=0.8)
    trace = regulation_trace(product=product, portfolio="default", start=HOUR_START, rows=391)
    pure = scoring.performance_score(trace.reg_mw, trace.response_mw)
    record = performance_score_compute(product=product, period_start=HOUR_START)
    assert float(record.composite) == pytest.approx(pure.composite, abs=1e-6)


def test_a_fleet_portfolio_is_scored_on_its_own_vehicles_stations_only(product):
    # given fleet F's van plugged in at one station following the signal, and a stranger's station charging flat out
    owner = Organisation.objects.create(name="Acme Logistics", slug="acme")
    fleet = Fleet.objects.create(organisation=owner, name="vans")
    van = Vehicle.objects.create(
        fleet=fleet, name="VAN-7", model="e-Transit", usable_capacity_wh=68_000, ac_max_charge_w=11_000
    )
    ours, theirs = stations(2)
    PlugSession.objects.create(
        vehicle=van, station_id=ours.station_id, evse_id=1, matched_by="manual", started_at=HOUR_START
    )
    portfolio = f"fleet-{fleet.pk}"
    award_for(product, HOUR_START, awarded_w=10_000, price="20.00", portfolio=portfolio)
    store_signal(product, HOUR_START, portfolio=portfolio)
    store_following([ours], HOUR_START, capacity_w=10_000)
    store_following([theirs], HOUR_START, capacity_w=7_000, fn=lambda t: -1.0)  # charging 7 kW all hour
    # when the fleet's hour is scored
    record = performance_score_compute(product=product, portfolio=portfolio, period_start=HOUR_START)
    # then only its own station counts, and it followed perfectly
    assert record.stations == 1
    assert record.composite == D(1)


def test_a_vehicle_is_charged_its_own_cycle_wear_on_its_metered_soc_trace(product, prices):
    # given a 20 kW award served by one van: 50 kWh, its own pack at $120/kWh rated 2,500 cycles at 80 %,
    # efficiencies 1 (so pack energy is metered energy), at 50 % SoC and 35 degC when the hour starts
    award = award_for(product, HOUR_START, awarded_w=20_000, price="20.00")
    store_signal(product, HOUR_START)
    (station,) = stations(1)
    # it discharges 20 kW for the first half hour and charges 20 kW for the second: SoC 50 -> 30 -> 50 %
    store_following([station], HOUR_START, capacity_w=20_000, fn=lambda t: 1.0 if t < 1800 else -1.0)
    owner = Organisation.objects.create(name="Acme Logistics", slug="acme")
    van = Vehicle.objects.create(
        fleet=Fleet.objects.create(organisation=owner, name="vans"), name="VAN-9", model="e-Transit",
        usable_capacity_wh=50_000, ac_max_charge_w=22_000, charge_efficiency=1.0, discharge_efficiency=1.0,
        pack_cost_per_kwh=D("120.00"), cycle_life=2500, rated_dod=D("0.800"),
    )  # fmt: skip
    PlugSession.objects.create(
        vehicle=van, station_id=station.station_id, evse_id=1, matched_by="manual", started_at=HOUR_START
    )
    SocEstimate.objects.create(
        vehicle=van, soc_wh=25_000, source=SocSource.REPORTED, valid_at=HOUR_START, known_at=HOUR_START
    )
    PackTemperature.objects.create(
        vehicle=van, temperature_c=35.0, source="reported", valid_at=HOUR_START, known_at=HOUR_START
    )
    # when the hour is settled
    settlement = settlement_compute(award=award, period_start=HOUR_START)
    # then rainflow finds one full cycle of depth 0.2 at mean SoC 0.4 (two half cycles, 0.5 -> 0.3 -> 0.5), priced
    # on the van's own rating, one rated cycle = $120 x 50 / 2,500 = $2.40:
    #   depth  Phi(0.2) / Phi(0.8) = 33,559.69 / 190,553.76 = 0.176117
    #   SoC    exp(1.04 x (0.4 - 0.5)) = 0.901225
    #   heat   stress(35 degC) / stress(25 degC) = 2.713604 / 1.420104 = 1.910848
    #   $2.40 x 0.176117 x 0.901225 x 1.910848 = $0.727900 -> $0.73
    (line,) = settlement.lines.all()
    assert line.vehicle_id == van.id
    assert line.degradation_cost == D("0.73")
    assert D(settlement.exact["degradation"]) == pytest.approx(D("0.727900"), abs=D("0.000003"))
    # the default-parameter throughput model would have charged 20,000 Wh x $0.03125/kWh = $0.625 -> $0.62


def test_a_reserve_event_mid_hour_is_not_counted_as_regulation_response(product, award):
    # Given two stations following the signal, and a 200 kW reserve event from 14:10 to 14:20 during which each
    # discharges 100 kW more (the dispatcher's setpoint: basepoint - signal x capacity - reserve)
    store_signal(product, HOUR_START)
    rows = store_following(stations(2), HOUR_START, capacity_w=CAPACITY_W)
    event_start, event_end = HOUR_START + timedelta(minutes=10), HOUR_START + timedelta(minutes=20)
    reserve_deployment_record(
        portfolio="default", event_id="mid-hour", power_w=200_000, start=event_start, end=event_end,
        source=SignalSource.UTILITY_API,
    )  # fmt: skip
    readings: dict[tuple[int, object], dict[str, MeterValue]] = {}
    for row in rows:
        if row.measurand.startswith("Power.") and event_start <= row.timestamp < event_end:
            readings.setdefault((row.station_id, row.timestamp), {})[row.measurand] = row
    for pair in readings.values():
        imported, exported = pair["Power.Active.Import"], pair["Power.Active.Export"]
        net = imported.value - exported.value - 100_000
        imported.value, exported.value = max(net, 0), max(-net, 0)
    MeterValue.objects.bulk_update(rows, ["value"], batch_size=5000)
    # When the hour's trace is read
    trace = regulation_trace(product=product, portfolio="default", start=HOUR_START, rows=391)
    # Then the fleet power shows the 200 kW, yet the regulation response is the signal throughout
    expected = np.array([triangle(10 * i) for i in range(391)])
    assert trace.fleet_power_w[60] == pytest.approx(-expected[60] * CAPACITY_W - 200_000)
    assert trace.response_mw == pytest.approx(expected, abs=1e-6)
