"""Settlement arithmetic to the cent: credits, energy, degradation, attribution to vehicles and owners."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from markets.regulation.settlement import (
    CENT,
    Amounts,
    IntervalEnergy,
    RegulationTerms,
    SettlementError,
    VehicleMetering,
    score_decimal,
    settle_award_hour,
    split_cents,
    to_cents,
)

D = Decimal
T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2025, 7, 1, 12, 30, tzinfo=UTC)
PRICES = {T0: D("40.00"), T1: D("55.50")}
TERMS = RegulationTerms(
    awarded_w=2_500_000, hours=D(1), capacity_price=D("12.34"), performance_price=D("3.21"), mileage_ratio=D("3.2")
)


def vehicle(vehicle_id: int, owner: str, response_wh: int, *rows: tuple[datetime, int, int]) -> VehicleMetering:
    return VehicleMetering(
        vehicle_id=vehicle_id,
        owner=owner,
        response_wh=response_wh,
        energy=tuple(IntervalEnergy(start, imp, exp) for start, imp, exp in rows),
    )


FLEET = [
    vehicle(1, "A", 3000, (T0, 1500, 0), (T1, 0, 800)),
    vehicle(2, "A", 1000, (T0, 0, 2000), (T1, 0, 0)),
    vehicle(3, "B", 1000, (T0, 700, 0), (T1, 300, 100)),
]


def test_an_award_hour_settles_to_the_cent_as_computed_by_hand():
    # when one hour of a 2.5 MW award is settled at a score of 0.912345
    result = settle_award_hour(terms=TERMS, score=0.9123449999999, vehicles=FLEET, energy_prices=PRICES)
    # then: score rounded to 6 places
    assert result.score == D("0.912345")
    # capacity 2.5 MW x 1 h x $12.34 x 0.912345 = 28.14584325 -> 28.15
    assert result.exact.capacity == D("28.14584325")
    # performance 2.5 x 1 x 3.2 x $3.21 x 0.912345 = 23.4290196 -> 23.43
    assert result.exact.performance == D("23.4290196")
    # energy: v1 -1.5 kWh x $40 + 0.8 kWh x $55.5 = -0.0156; v2 +2 kWh x 40 = 0.08; v3 -0.7 x 40 - 0.2 x 55.5 = -0.0391
    assert result.exact.energy == D("0.0253")
    # pack throughput 2250 / 2174 / 1029 Wh at $0.03125/kWh = 0.070312 (half-even) + 0.067938 + 0.032156
    assert result.exact.degradation == D("0.170406")
    assert result.amounts == Amounts(D("28.15"), D("23.43"), D("0.03"), D("0.17"))
    assert result.amounts.net == D("51.44")


def test_vehicle_lines_split_the_cents_by_response_and_own_metering():
    result = settle_award_hour(terms=TERMS, score=D("0.912345"), vehicles=FLEET, energy_prices=PRICES)
    lines = {line.vehicle_id: line.amounts for line in result.vehicles}
    # capacity 3:1:1 of 28.14584325 = 16.8875.., 5.6291.., 5.6291..: floors 28.12, three cents to the three
    assert [lines[v].capacity for v in (1, 2, 3)] == [D("16.89"), D("5.63"), D("5.63")]
    # performance 14.0574.., 4.6858.., 4.6858..: floors 23.41, two cents to v1 and (tie, lower id) v2
    assert [lines[v].performance for v in (1, 2, 3)] == [D("14.06"), D("4.69"), D("4.68")]
    # energy -0.0156, 0.08, -0.0391: floors -0.02, 0.08, -0.04 = 0.02, the missing cent to v1 (largest remainder)
    assert [lines[v].energy for v in (1, 2, 3)] == [D("-0.01"), D("0.08"), D("-0.04")]
    assert [lines[v].degradation for v in (1, 2, 3)] == [D("0.07"), D("0.07"), D("0.03")]
    assert [(line.import_wh, line.export_wh, line.pack_throughput_wh) for line in result.vehicles] == [
        (1500, 800, 2250),
        (0, 2000, 2174),
        (1000, 100, 1029),
    ]


def test_a_zero_score_earns_no_capacity_or_performance_credit():
    result = settle_award_hour(terms=TERMS, score=0.0, vehicles=FLEET, energy_prices=PRICES)
    assert (result.amounts.capacity, result.amounts.performance) == (D("0.00"), D("0.00"))
    assert result.amounts.energy == D("0.03")  # energy is paid whatever the score


def test_an_unscored_product_is_settled_with_score_one_and_no_performance_price():
    terms = RegulationTerms(awarded_w=1_000_000, hours=D("0.25"), capacity_price=D("9.99"))
    result = settle_award_hour(terms=terms, score=1, vehicles=[], energy_prices={})
    assert result.amounts == Amounts(D("2.50"), D("0.00"), D("0.00"), D("0.00"))  # 2.4975 -> 2.50
    assert result.vehicles == ()


def test_with_nobody_responding_credits_are_shared_equally():
    fleet = [vehicle(i, "A", 0, (T0, 0, 0)) for i in (7, 8, 9)]
    terms = RegulationTerms(awarded_w=1_000_000, hours=D(1), capacity_price=D("10"))
    result = settle_award_hour(terms=terms, score=1, vehicles=fleet, energy_prices=PRICES)
    assert [line.amounts.capacity for line in result.vehicles] == [D("3.34"), D("3.33"), D("3.33")]


def test_rounding_is_half_to_even():
    assert to_cents(D("0.125")) == D("0.12")
    assert to_cents(D("0.135")) == D("0.14")
    assert to_cents(D("-0.125")) == D("-0.12")
    assert score_decimal(0.7488885) == D("0.748888")


def test_it_refuses_inputs_it_cannot_settle():
    with pytest.raises(SettlementError, match="no energy price"):
        settle_award_hour(terms=TERMS, score=1, vehicles=FLEET, energy_prices={T0: D(40)})
    with pytest.raises(SettlementError, match=r"0\.\.1"):
        score_decimal(1.2)
    with pytest.raises(SettlementError, match="magnitudes"):
        IntervalEnergy(T0, -1, 0)
    with pytest.raises(SettlementError, match="twice"):
        settle_award_hour(terms=TERMS, score=1, vehicles=[FLEET[0], FLEET[0]], energy_prices=PRICES)


money = st.decimals(min_value=D("-1000"), max_value=D("1000"), places=6, allow_nan=False, allow_infinity=False)


@given(st.lists(money, min_size=1, max_size=30))
def test_split_cents_adds_up_exactly_and_stays_within_a_cent_of_each_share(shares):
    total = to_cents(sum(shares, D(0)))
    parts = split_cents(total, shares)
    assert sum(parts, D(0)) == total
    assert all(abs(part - share) < CENT for part, share in zip(parts, shares, strict=True))


@given(
    awarded_w=st.integers(min_value=0, max_value=50_000_000),
    score=st.floats(min_value=0, max_value=1),
    meters=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=12
    ),
)
def test_vehicle_lines_always_add_up_to_the_award_line(awarded_w, score, meters):
    fleet = [vehicle(i, f"owner-{i % 3}", resp, (T0, imp, exp)) for i, (resp, imp, exp) in enumerate(meters)]
    terms = RegulationTerms(
        awarded_w=awarded_w, hours=D(1), capacity_price=D("31.07"), performance_price=D("2.93"), mileage_ratio=D("3.2")
    )
    result = settle_award_hour(terms=terms, score=score, vehicles=fleet, energy_prices=PRICES)
    summed = Amounts(D(0), D(0), D(0), D(0))
    for line in result.vehicles:
        summed = summed + line.amounts
    assert summed == result.amounts
