"""Energy from power readings and its reconciliation with the energy registers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markets.regulation.metering import Reconciliation, cumulative_energy_wh, interval_energy_wh, reconcile


def test_each_reading_holds_until_the_next_and_splits_at_interval_edges():
    # given 3600 W charging from t=0 and -1800 W (export) from t=1800 s, edges every 900 s
    times = np.array([0.0, 1800.0, 3599.0])
    power = np.array([3600.0, -1800.0, -1800.0])
    imported, exported = interval_energy_wh(times, power, [0, 900, 1800, 2700, 3600], max_hold_s=3600)
    # then 900 Wh import in each of the first two quarters, 450 Wh export in each of the last two
    assert imported.tolist() == [900, 900, 0, 0]
    assert exported.tolist() == [0, 0, 450, 450]


def test_power_is_not_held_past_the_maximum_hold():
    # a reading at t=0 then silence: with a 60 s hold only one minute of energy is counted
    imported, _ = interval_energy_wh([0.0], [6000.0], [0, 3600], max_hold_s=60)
    assert imported.tolist() == [100]


def test_energy_before_the_first_reading_is_zero():
    imported, exported = cumulative_energy_wh([100.0], [3600.0], [50.0, 100.0, 200.0], max_hold_s=1e9)
    assert imported.tolist() == pytest.approx([0.0, 0.0, 100.0])
    assert exported.tolist() == [0.0, 0.0, 0.0]


def test_it_refuses_duplicate_reading_times():
    with pytest.raises(ValueError, match="strictly increasing"):
        interval_energy_wh([0.0, 0.0], [1.0, 1.0], [0, 10], max_hold_s=10)


def test_reconciliation_agrees_within_a_tenth_of_a_percent():
    assert Reconciliation(integrated_wh=10_009, register_wh=10_000).agrees
    assert not Reconciliation(integrated_wh=10_011, register_wh=10_000).agrees
    assert Reconciliation(integrated_wh=1, register_wh=0).agrees  # integer rounding
    assert not Reconciliation(integrated_wh=5, register_wh=0).agrees


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=-11_000, max_value=11_000), min_size=20, max_size=300))
def test_integrated_power_matches_registers_kept_by_an_ideal_meter(powers):
    # given an ideal meter integrating piecewise-constant power and reporting every second
    times = np.arange(len(powers), dtype=float)
    p = np.asarray(powers)
    imp_register = np.concatenate([[0.0], np.cumsum(np.clip(p, 0, None) / 3600)])[:-1]
    exp_register = np.concatenate([[0.0], np.cumsum(np.clip(-p, 0, None) / 3600)])[:-1]
    # when reconciled over the span of the register readings
    imp, exp = reconcile(times, p, times, imp_register, exp_register, max_hold_s=2)
    # then both directions agree to the rounding of whole Wh
    assert abs(imp.difference_wh) <= 1
    assert abs(exp.difference_wh) <= 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=-11_000, max_value=11_000), min_size=10, max_size=400))
def test_interval_energies_add_up_to_the_rounded_total(powers):
    # given readings every 2 s and 5-min intervals whose rounding would drift if done interval by interval
    times = np.arange(len(powers), dtype=float) * 2
    edges = np.arange(0, times[-1] + 300, 300.0)
    imported, exported = interval_energy_wh(times, powers, edges, max_hold_s=10)
    total_import, total_export = cumulative_energy_wh(times, powers, edges[[0, -1]], max_hold_s=10)
    assert imported.sum() == round(total_import[1])
    assert exported.sum() == round(total_export[1])
