"""Thermal derating and the wear weight used to balance dispatch across vehicles. Pure numpy, no Django.

Derating: a lithium-ion pack's BMS cuts power when hot (to limit further heating and SEI growth) and cuts *charge*
power when cold (lithium plating). The break points below are configurable defaults typical of automotive packs
(*check*: no single primary source; manufacturers publish curves per model), applied to the lower of the car's and
the charger's power limits.

Wear weight: a dimensionless factor in (0, 1] that scales how much of a fleet setpoint a vehicle carries. It is a
dispatch *policy*, not a physical model; its temperature term is the inverse of the Arrhenius-type temperature stress
of B. Xu et al., IEEE Trans. Smart Grid 9(2), 2018, so a pack that ages twice as fast carries half as much.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Hot derating: full power up to HOT_DERATE_START_C, linear down to zero at HOT_DERATE_STOP_C.
HOT_DERATE_START_C = 40.0
HOT_DERATE_STOP_C = 55.0
# Cold charge derating: full charge power down to COLD_CHARGE_START_C, linear down to COLD_CHARGE_MIN_FRACTION
# at COLD_CHARGE_STOP_C and below (discharging a cold pack is harmless for plating, so it is not derated).
COLD_CHARGE_START_C = 5.0
COLD_CHARGE_STOP_C = -20.0
COLD_CHARGE_MIN_FRACTION = 0.2

# Wear weight: state of health at or below SOH_FLOOR carries the minimum share; SOH 1.0 carries a full share.
SOH_FLOOR = 0.7
MIN_WEIGHT = 0.02
XU_TEMPERATURE_COEFF = 0.0693  # k_T, Xu et al. 2018
XU_REFERENCE_K = 293.0  # T_ref as given in the reference sheet (shared/reference/grid-and-market-figures.md)


def _hot_factor(temp_c: FloatArray) -> FloatArray:
    span = HOT_DERATE_STOP_C - HOT_DERATE_START_C
    return np.clip((HOT_DERATE_STOP_C - temp_c) / span, 0.0, 1.0)


def charge_derate(temp_c: npt.ArrayLike) -> FloatArray:
    """Fraction (0..1) of the rated charge power usable at pack temperature ``temp_c`` (°C)."""
    t = np.asarray(temp_c, dtype=np.float64)
    span = COLD_CHARGE_START_C - COLD_CHARGE_STOP_C
    cold = COLD_CHARGE_MIN_FRACTION + (1.0 - COLD_CHARGE_MIN_FRACTION) * np.clip(
        (t - COLD_CHARGE_STOP_C) / span, 0.0, 1.0
    )
    return np.minimum(_hot_factor(t), cold)


def discharge_derate(temp_c: npt.ArrayLike) -> FloatArray:
    """Fraction (0..1) of the rated discharge power usable at pack temperature ``temp_c`` (°C)."""
    return _hot_factor(np.asarray(temp_c, dtype=np.float64))


def temperature_stress(temp_c: npt.ArrayLike) -> FloatArray:
    """Xu et al. 2018 temperature stress ``exp(k_T (T - T_ref) T_ref / T)`` with T in kelvin (1.0 at T_ref)."""
    t_k = np.asarray(temp_c, dtype=np.float64) + 273.15
    return np.exp(XU_TEMPERATURE_COEFF * (t_k - XU_REFERENCE_K) * XU_REFERENCE_K / t_k)


def wear_weight(state_of_health: npt.ArrayLike, temp_c: npt.ArrayLike, cycles_today: npt.ArrayLike) -> FloatArray:
    """Share factor in [MIN_WEIGHT, 1]: lower health, a hotter pack or more cycles today => a smaller share.

    ``soh_term`` falls linearly from 1 at SoH 1.0 to 0 at :data:`SOH_FLOOR`; ``heat_term`` is ``1 / temperature
    stress`` above the reference temperature (never boosted when cold); ``cycle_term`` is ``1 / (1 + cycles_today)``.
    """
    soh = np.asarray(state_of_health, dtype=np.float64)
    soh_term = np.clip((soh - SOH_FLOOR) / (1.0 - SOH_FLOOR), 0.0, 1.0)
    heat_term = np.minimum(1.0, 1.0 / temperature_stress(temp_c))
    cycle_term = 1.0 / (1.0 + np.maximum(np.asarray(cycles_today, dtype=np.float64), 0.0))
    return np.clip(soh_term * heat_term * cycle_term, MIN_WEIGHT, 1.0)
