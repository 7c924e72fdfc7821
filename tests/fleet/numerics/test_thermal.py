"""Thermal derating and wear weight."""

from __future__ import annotations

import pytest

from fleet.numerics.thermal import charge_derate, discharge_derate, temperature_stress, wear_weight


@pytest.mark.parametrize(
    ("temp_c", "charge", "discharge"),
    [(25, 1.0, 1.0), (40, 1.0, 1.0), (47.5, 0.5, 0.5), (55, 0.0, 0.0), (-7.5, 0.6, 1.0), (-30, 0.2, 1.0)],
)
def test_power_is_derated_when_hot_and_charge_when_cold(temp_c: float, charge: float, discharge: float) -> None:
    assert float(charge_derate(temp_c)) == pytest.approx(charge)
    assert float(discharge_derate(temp_c)) == pytest.approx(discharge)


def test_temperature_stress_is_one_at_the_reference() -> None:
    assert float(temperature_stress(293.0 - 273.15)) == pytest.approx(1.0)


def test_wear_weight_shrinks_with_wear_heat_and_cycles() -> None:
    fresh = float(wear_weight(1.0, 25.0, 0.0))
    assert float(wear_weight(0.85, 25.0, 0.0)) == pytest.approx(fresh * 0.5)
    assert float(wear_weight(1.0, 40.0, 0.0)) < fresh
    assert float(wear_weight(1.0, 25.0, 1.0)) == pytest.approx(fresh * 0.5)
    assert float(wear_weight(0.5, 25.0, 0.0)) == pytest.approx(0.02)
