"""Demand-charge tariff, avoided-charge settlement and load forecast: the pure code, checked against hand figures."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from markets.peak.forecast import SameTimeOfWeek
from markets.peak.settlement import IntervalDemand, settle_peak_period
from markets.peak.tariff import ChargeSpec, TariffSpec, billed_peaks, peak_so_far

FACILITY = ChargeSpec(1, "facility", Decimal("10.00"))
ON_PEAK = ChargeSpec(2, "on-peak", Decimal("8.50"), weekdays="01234", window_start=time(12), window_end=time(20))
TARIFF = TariffSpec("America/New_York", 15, 1, (FACILITY, ON_PEAK))
MON_14H = datetime(2025, 7, 7, 18, 0, tzinfo=UTC)  # Monday 14:00 EDT
SAT_10H = datetime(2025, 7, 12, 14, 0, tzinfo=UTC)  # Saturday 10:00 EDT
TUE_21H = datetime(2025, 7, 9, 1, 0, tzinfo=UTC)  # Tuesday 21:00 EDT (after the on-peak window)


def test_the_billing_period_is_the_local_calendar_month():
    start, end = TARIFF.billing_period(MON_14H)
    # 1 July 00:00 EDT = 04:00 UTC; 1 August 00:00 EDT likewise
    assert (start, end) == (datetime(2025, 7, 1, 4, tzinfo=UTC), datetime(2025, 8, 1, 4, tzinfo=UTC))


def test_a_billing_day_after_today_puts_the_instant_in_the_period_that_began_last_month():
    tariff = TariffSpec("America/New_York", 15, 15, (FACILITY,))
    start, end = tariff.billing_period(MON_14H)
    assert (start, end) == (datetime(2025, 6, 15, 4, tzinfo=UTC), datetime(2025, 7, 15, 4, tzinfo=UTC))


def test_the_on_peak_charge_bills_weekday_afternoons_only():
    peaks = billed_peaks(TARIFF, {MON_14H: 410_123, SAT_10H: 430_000, TUE_21H: 300_000})
    assert [(p.peak_w, p.at) for p in peaks] == [(430_000, SAT_10H), (410_123, MON_14H)]


def test_the_avoided_charge_is_the_counterfactual_bill_minus_the_metered_bill_to_the_cent():
    # Given a Monday afternoon the fleet discharged 59.877 kW into, and a Saturday morning peak it did not touch
    intervals = [
        IntervalDemand(MON_14H, metered_w=410_123, fleet_discharge_w=59_877),
        IntervalDemand(SAT_10H, metered_w=430_000, fleet_discharge_w=0),
        IntervalDemand(TUE_21H, metered_w=300_000, fleet_discharge_w=0),
    ]
    result = settle_peak_period(tariff=TARIFF, intervals=intervals)
    facility, on_peak = result.lines
    # facility $10/kW: metered 430 kW (Saturday) = $4,300.00; without the fleet 470 kW (Monday) = $4,700.00
    assert (facility.metered.amount, facility.counterfactual.amount, facility.avoided) == (
        Decimal("4300.00"), Decimal("4700.00"), Decimal("400.00"),
    )  # fmt: skip
    # on-peak $8.50/kW: 410.123 kW = $3,486.0455 -> $3,486.05; 470 kW = $3,995.00; avoided $508.95
    assert (on_peak.metered.amount, on_peak.counterfactual.amount, on_peak.avoided) == (
        Decimal("3486.05"), Decimal("3995.00"), Decimal("508.95"),
    )  # fmt: skip
    assert (result.metered_charge, result.counterfactual_charge, result.avoided) == (
        Decimal("7786.05"), Decimal("8695.00"), Decimal("908.95"),
    )  # fmt: skip


def test_money_is_rounded_half_to_even_once_per_charge():
    # 0.5 W at $10/kW is half a cent: half to even rounds $0.005 down to $0.00, 1.5 W ($0.015) up to $0.02
    tariff = TariffSpec("UTC", 15, 1, (FACILITY,))
    assert billed_peaks(tariff, {MON_14H: 0})[0].amount == Decimal("0.00")
    assert FACILITY.amount(1) == Decimal("0.01")
    half = ChargeSpec(3, "x", Decimal("5.00"))
    assert [billed_peaks(TariffSpec("UTC", 15, 1, (half,)), {MON_14H: w})[0].amount for w in (1, 3)] == [
        Decimal("0.00"), Decimal("0.02"),
    ]  # fmt: skip


def test_export_never_makes_a_negative_demand():
    assert billed_peaks(TARIFF, {MON_14H: -50_000})[0].peak_w == 0


def test_the_peak_so_far_counts_only_this_billing_period_before_the_instant():
    june = datetime(2025, 6, 30, 18, tzinfo=UTC)
    later = MON_14H + timedelta(hours=1)
    demand = [(june, 900_000), (MON_14H, 380_000), (later, 999_000)]
    assert peak_so_far(TARIFF, demand, at=later) == 380_000


def test_the_forecast_is_the_mean_of_the_same_weekday_and_time_over_the_last_weeks():
    target = MON_14H + timedelta(weeks=4)
    history = {target - timedelta(weeks=k): float(w) for k, w in ((1, 400_000), (2, 380_000), (3, 420_000))}
    history[target - timedelta(days=1)] = 100_000.0  # Sunday: not a Monday, ignored while Mondays exist
    assert SameTimeOfWeek(weeks=4).forecast(history, [target]) == [400_000.0]


def test_a_young_meter_is_forecast_from_the_same_time_on_recent_days():
    target = MON_14H
    history = {target - timedelta(days=1): 200_000.0, target - timedelta(days=2): 300_000.0}
    assert SameTimeOfWeek().forecast(history, [target, target + timedelta(minutes=15)]) == [250_000.0, None]
