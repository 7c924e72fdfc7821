"""Degradation: the reference sheet's worked example, rainflow cycle counting and equivalent full cycles."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.numerics.degradation import (
    DegradationParams,
    count_cycles,
    cycle_aging_cost,
    cycle_wear,
    equivalent_full_cycles,
    marginal_cost_per_kwh,
    money,
    pack_throughput_wh,
    throughput_cost,
    throughput_cost_per_kwh,
)


def test_throughput_cost_matches_the_worked_example() -> None:
    # $150/kWh, 3,000 cycles at 80 % => 150 / (2 * 3000 * 0.8) = $0.03125 per kWh
    assert throughput_cost_per_kwh(DegradationParams()) == Decimal("0.031250")
    assert throughput_cost(10_000) == Decimal("0.312500")


def test_a_dispatch_costs_the_energy_through_each_pack() -> None:
    # 10 kW for 1 h: charging puts 9.2 kWh in the pack, discharging takes 10 / 0.92 = 10.87 kWh out
    charge, discharge, idle = (throughput_cost(float(e)) for e in pack_throughput_wh([10_000, -10_000, 0], 3600))
    assert charge == Decimal("0.287500")
    assert discharge == Decimal("0.339674")
    assert idle == Decimal("0")


def test_one_swing_is_two_half_cycles_of_its_depth() -> None:
    cycles = count_cycles([0.2, 0.8, 0.2])
    assert cycles.depth.tolist() == pytest.approx([0.6, 0.6])
    assert cycles.count.tolist() == [0.5, 0.5]
    assert cycles.mean_soc.tolist() == pytest.approx([0.5, 0.5])
    assert equivalent_full_cycles([0.2, 0.8, 0.2]) == pytest.approx(0.6**1.1)


def test_a_flat_or_single_sample_trajectory_has_no_cycles() -> None:
    assert equivalent_full_cycles([0.5]) == 0.0
    assert equivalent_full_cycles([0.5, 0.5, 0.5]) == 0.0


def test_it_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        count_cycles([0.5, 1.5])
    with pytest.raises(ValueError):
        DegradationParams(cycle_life=0)
    with pytest.raises(ValueError):
        throughput_cost(-1)


# --- cycle ageing cost: the one model settlement and bidding share ------------------------------------------------

VAN = DegradationParams(pack_cost_per_kwh=Decimal("120"), cycle_life=2500, rated_dod=Decimal("0.8"))


def test_rainflow_counts_a_small_trace_as_done_by_hand() -> None:
    # given SoC 20 -> 60 -> 40 -> 80 -> 20 %
    # by hand (ASTM E1049): stack 20,60,40 (X=20 < Y=40); add 80: X=40 >= Y=20 and Y (60-40) does not hold the
    # start -> one full cycle of depth 0.2, mean 0.5; stack 20,80; add 20: X=60 >= Y=60 holding the start -> a half
    # cycle of 0.6 (mean 0.5); what is left, 80 -> 20, is the other half cycle of 0.6.
    cycles = count_cycles([0.2, 0.6, 0.4, 0.8, 0.2])
    assert sorted(zip(cycles.depth.round(9), cycles.count, cycles.mean_soc.round(9), strict=True)) == [
        (0.2, 1.0, 0.5),
        (0.6, 0.5, 0.5),
        (0.6, 0.5, 0.5),
    ]


def test_a_full_cycle_at_the_rated_depth_costs_the_pack_over_its_cycle_life() -> None:
    # given 60 kWh at $150/kWh rated 3,000 cycles at 80 %: one cycle 10 -> 90 -> 10 % at mean 50 %, 25 degC
    cost = cycle_aging_cost([0.1, 0.9, 0.1], capacity_wh=60_000, params=DegradationParams())
    # then it uses 1/3000 of the pack: 150 x 60 / 3000 = $3.00, exactly what the throughput model charges for the
    # 2 x 0.8 x 60 = 96 kWh it moves (96 x $0.03125)
    assert cost == Decimal("3.000000")
    assert cost == throughput_cost(96_000)


def test_a_vehicle_is_charged_its_own_pack_cost_and_cycle_life_to_the_cent() -> None:
    # given a 50 kWh van at $120/kWh rated 2,500 cycles at 80 %: one rated cycle costs 120 x 50 / 2500 = $2.40
    # and the trace counted by hand above: a full cycle of 0.2 and a full cycle of 0.6, both at mean SoC 0.5
    # depth stress denominators 1.4e5 x d^-0.501 - 1.23e5: d=0.8: 1.4e5 x 1.1182835 - 1.23e5 = 33,559.69;
    # d=0.6: 1.4e5 x 1.2916541 - 1.23e5 = 57,831.57; d=0.2: 1.4e5 x 2.2396697 - 1.23e5 = 190,553.76
    # life used = (33,559.69 / 190,553.76 + 33,559.69 / 57,831.57) / 2500 = (0.176117 + 0.580300) / 2500
    wear = cycle_wear([0.2, 0.6, 0.4, 0.8, 0.2], capacity_wh=50_000, params=VAN)
    assert wear.life_used == pytest.approx(0.756417 / 2500, rel=1e-5)
    # cost = 0.756417 x $2.40 = $1.8154 -> $1.82
    assert wear.cost.quantize(Decimal("0.01")) == Decimal("1.82")
    assert wear.cost == pytest.approx(Decimal("1.815401"), abs=Decimal("0.000002"))
    # the default $150 / 3,000-cycle parameters would have charged 150 x 50 / 3000 x 0.756417 = $1.89
    assert cycle_aging_cost([0.2, 0.6, 0.4, 0.8, 0.2], capacity_wh=50_000, params=DegradationParams()).quantize(
        Decimal("0.01")
    ) == Decimal("1.89")


def test_a_hot_pack_wears_faster_and_a_cold_one_is_not_cheaper() -> None:
    # temperature stress exp(0.0693 (T - 293) 293 / T), T in K: 35 degC -> 2.713604, 25 degC -> 1.420104
    rated = cycle_aging_cost([0.1, 0.9, 0.1], capacity_wh=60_000, params=DegradationParams())
    hot = cycle_aging_cost([0.1, 0.9, 0.1], capacity_wh=60_000, params=DegradationParams(), temperature_c=35.0)
    cold = cycle_aging_cost([0.1, 0.9, 0.1], capacity_wh=60_000, params=DegradationParams(), temperature_c=0.0)
    # $3.00 x 2.713604 / 1.420104 = $3.00 x 1.910848 = $5.73
    assert hot.quantize(Decimal("0.01")) == Decimal("5.73")
    assert cold == rated


def test_a_cycle_is_stressed_at_the_temperature_of_the_samples_it_spans() -> None:
    # given one swing at 25 degC and the same swing again with the pack at 35 degC
    trace = [0.1, 0.9, 0.1, 0.9, 0.1]
    temps = [25.0, 25.0, 35.0, 35.0, 35.0]
    wear = cycle_aging_cost(trace, capacity_wh=60_000, params=DegradationParams(), temperature_c=temps)
    # rainflow: four half cycles of 0.8 at mean 0.5, samples 0-1 (25, 25 -> 25 degC), 1-2 (25, 35 -> 30 degC),
    # 2-3 and 3-4 (35 degC); stress ratio at 30 degC: exp(0.0693 (303.15 - 293) 293 / 303.15) / 1.420104
    # = 1.973570 / 1.420104 = 1.389736
    # cost = $3.00 x 0.5 x (1 + 1.389736 + 1.910848 x 2) = $9.32
    assert wear.quantize(Decimal("0.01")) == Decimal("9.32")


def test_shallow_cycles_cost_in_proportion_to_their_depth_below_ten_percent() -> None:
    one = cycle_aging_cost([0.495, 0.505, 0.495], capacity_wh=60_000, params=DegradationParams())
    ten = cycle_aging_cost([0.45, 0.55, 0.45], capacity_wh=60_000, params=DegradationParams())
    # a 10 % cycle at mean SoC 0.5: $3.00 x 33,559.69 / 320,739.44 = $0.313896;
    # a 1 % cycle a tenth of it (Phi(0.01) unheld would make it 2.5x that)
    assert ten == pytest.approx(Decimal("0.313896"), abs=Decimal("0.000002"))
    assert one == pytest.approx(ten / 10, abs=Decimal("0.000002"))
    # per kWh through the pack (2 x 0.1 x 60 = 12 kWh): $0.026158, the rate bids use for shallow cycling
    assert marginal_cost_per_kwh(capacity_wh=60_000, params=DegradationParams()) == pytest.approx(
        Decimal("0.026158"), abs=Decimal("0.000001")
    )


@settings(max_examples=300, deadline=None)
@given(
    capacity_wh=st.integers(min_value=1_000, max_value=200_000),
    pack_cost=st.decimals(min_value=1, max_value=500, places=2),
    cycle_life=st.integers(min_value=100, max_value=10_000),
    rated_dod=st.decimals(min_value=Decimal("0.05"), max_value=1, places=2),
    soc=st.floats(min_value=0.0, max_value=1.0),
    temperature_c=st.floats(min_value=-30.0, max_value=60.0),
    depth=st.floats(min_value=0.001, max_value=1.0),
)
def test_the_marginal_cost_is_what_the_rainflow_count_prices_on_its_cycle(
    capacity_wh: int,
    pack_cost: Decimal,
    cycle_life: int,
    rated_dod: Decimal,
    soc: float,
    temperature_c: float,
    depth: float,
) -> None:
    # Given any pack, state of charge, temperature and cycle depth
    params = DegradationParams(pack_cost_per_kwh=pack_cost, cycle_life=cycle_life, rated_dod=rated_dod)
    # When the marginal cost is priced without running the count on its cycle
    marginal = marginal_cost_per_kwh(
        capacity_wh=capacity_wh, params=params, soc=soc, temperature_c=temperature_c, depth=depth
    )
    # Then it is exactly what cycle_aging_cost charges for that cycle (low -> low + depth -> low), per kWh through
    low = min(max(soc - depth / 2, 0.0), 1.0 - depth)
    counted = cycle_aging_cost(
        [low, low + depth, low], capacity_wh=capacity_wh, params=params, temperature_c=temperature_c
    )
    assert marginal == money(counted / (Decimal(repr(2 * depth)) * Decimal(capacity_wh) / 1000))
