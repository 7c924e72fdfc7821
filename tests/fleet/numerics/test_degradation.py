"""Degradation: the reference sheet's worked example, rainflow cycle counting and equivalent full cycles."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.numerics.degradation import (
    DegradationParams,
    count_cycles,
    equivalent_full_cycles,
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
