"""Degradation cost: the reference sheet's worked example and the Xu et al. 2018 formulas by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from fleet.numerics.degradation import (
    DegradationParams,
    count_cycles,
    cycle_damage,
    cycle_depth_cost,
    depth_stress,
    dispatch_throughput_cost,
    equivalent_full_cycles,
    marginal_cycle_depth_cost,
    throughput_cost,
    throughput_cost_per_kwh,
)


def test_throughput_cost_matches_the_worked_example() -> None:
    # $150/kWh, 3,000 cycles at 80 % => 150 / (2 * 3000 * 0.8) = $0.03125 per kWh
    assert throughput_cost_per_kwh(DegradationParams()) == Decimal("0.031250")
    assert throughput_cost(10_000) == Decimal("0.312500")


def test_a_dispatch_costs_the_energy_through_each_pack() -> None:
    # 10 kW for 1 h: charging puts 9.2 kWh in the pack, discharging takes 10 / 0.92 = 10.87 kWh out
    charge, discharge, idle = dispatch_throughput_cost([10_000, -10_000, 0], 3600)
    assert charge == Decimal("0.287500")
    assert discharge == Decimal("0.339674")
    assert idle == Decimal("0")


def test_depth_stress_follows_xu_by_hand() -> None:
    expected = 1 / (1.40e5 * 0.6**-0.501 - 1.23e5)
    assert float(depth_stress(0.6)) == pytest.approx(expected)
    assert expected == pytest.approx(1.729e-5, rel=1e-3)


def test_one_swing_is_two_half_cycles_of_its_depth() -> None:
    cycles = count_cycles([0.2, 0.8, 0.2])
    assert cycles.depth.tolist() == pytest.approx([0.6, 0.6])
    assert cycles.count.tolist() == [0.5, 0.5]
    # mean SoC 0.5 and 20 °C (= T_ref 293 K) leave only the depth stress
    assert cycle_damage([0.2, 0.8, 0.2], temperature_c=19.85) == pytest.approx(float(depth_stress(0.6)))
    assert equivalent_full_cycles([0.2, 0.8, 0.2]) == pytest.approx(0.6**1.1)


def test_cycle_depth_cost_prices_damage_against_end_of_life() -> None:
    # 60 kWh at $150/kWh = $9,000; end of life at 20 % fade
    cost = cycle_depth_cost([0.2, 0.8, 0.2], capacity_wh=60_000, temperature_c=19.85)
    assert float(cost) == pytest.approx(9000 * float(depth_stress(0.6)) / 0.2, rel=1e-5)


def test_deep_cycles_cost_more_per_kwh_than_moderate_ones() -> None:
    # per unit of depth the Xu fit is cheapest near d = 0.32 (N(d) * d peaks there), dearest for full cycles
    moderate = cycle_damage([0.35, 0.65, 0.35]) / 0.3
    deep = cycle_damage([0.1, 0.9, 0.1]) / 0.8
    assert deep > moderate


def test_heat_and_high_soc_age_faster() -> None:
    assert cycle_damage([0.2, 0.8, 0.2], temperature_c=40) > cycle_damage([0.2, 0.8, 0.2], temperature_c=20)
    assert cycle_damage([0.6, 0.9, 0.6]) > cycle_damage([0.1, 0.4, 0.1])


def test_the_marginal_cost_of_a_dispatch_is_the_difference() -> None:
    history = [0.5, 0.7, 0.5]
    added = [0.3, 0.5]
    marginal = marginal_cycle_depth_cost(history, added, capacity_wh=60_000)
    whole = cycle_depth_cost(history + added, capacity_wh=60_000)
    assert marginal == whole - cycle_depth_cost(history, capacity_wh=60_000)
    assert marginal > 0


def test_it_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        count_cycles([0.5, 1.5])
    with pytest.raises(ValueError):
        DegradationParams(cycle_life=0)
    with pytest.raises(ValueError):
        throughput_cost(-1)
    assert math.isclose(cycle_damage([0.5]), 0.0)
