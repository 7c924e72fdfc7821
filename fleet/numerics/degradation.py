"""Battery degradation: the throughput cost model and rainflow cycle counting. Pure Python/numpy, no Django.

Money crosses this module's boundary as :class:`~decimal.Decimal` (quantised to :data:`MONEY_QUANTUM`); the physics
is float. Used by bidding (marginal cost of offering flexibility) and settlement (cost of what was dispatched).

1. **Throughput model** (linear in energy)::

       c = pack_cost_per_kwh / (2 * cycle_life * DoD)            [$ per kWh through the battery]

   A cycle of depth DoD moves ``2 * DoD`` kWh per kWh of capacity (in and out); over ``cycle_life`` cycles the pack
   wears out, so each kWh through it costs the pack cost spread over that throughput. Worked example (the reference
   sheet, ``shared/reference/grid-and-market-figures.md``): $150/kWh, 3,000 cycles at 80 % DoD =>
   150 / (2 * 3000 * 0.8) = $0.03125/kWh. Energy "through the battery" is measured at the pack: grid energy times
   ``eta_c`` when charging, divided by ``eta_d`` when discharging.

2. **Cycle counting**: cycles are counted from the SoC trajectory with the rainflow algorithm (``rainflow`` package,
   ASTM E1049), for the vehicle's equivalent full cycles (its ageing record, ``fleet.services``).

3. **Equivalent full cycles** (reference sheet): a half cycle of depth ``d`` counts ``0.5 * d**1.1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import numpy.typing as npt
import rainflow

FloatArray = npt.NDArray[np.float64]

MONEY_QUANTUM = Decimal("0.000001")  # $; costs per kWh are fractions of a cent

EFC_EXPONENT = 1.1


def money(value: float | Decimal) -> Decimal:
    """Quantise a money amount to :data:`MONEY_QUANTUM` (banker's rounding)."""
    return Decimal(str(value)).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class DegradationParams:
    """Battery economics of one vehicle model: pack replacement cost and rated cycle life at a depth of discharge."""

    pack_cost_per_kwh: Decimal = Decimal("150")
    cycle_life: int = 3000
    rated_dod: Decimal = Decimal("0.8")

    def __post_init__(self) -> None:
        if self.pack_cost_per_kwh < 0 or self.cycle_life <= 0 or not (0 < self.rated_dod <= 1):
            raise ValueError("pack cost >= 0, cycle life > 0 and 0 < DoD <= 1 are required")


# --- Throughput model -----------------------------------------------------------------------------------------------


def throughput_cost_per_kwh(params: DegradationParams = DegradationParams()) -> Decimal:
    """``pack_cost / (2 * cycle_life * DoD)`` in $ per kWh through the pack (exact Decimal, then quantised)."""
    return money(params.pack_cost_per_kwh / (2 * params.cycle_life * params.rated_dod))


def pack_throughput_wh(
    power_w: npt.ArrayLike,
    duration_s: float,
    *,
    charge_efficiency: npt.ArrayLike = 0.92,
    discharge_efficiency: npt.ArrayLike = 0.92,
) -> FloatArray:
    """Energy through each pack (Wh, >= 0) for grid power ``power_w`` (+ charge) held ``duration_s`` seconds."""
    p = np.asarray(power_w, dtype=np.float64)
    hours = duration_s / 3600.0
    eta_c = np.asarray(charge_efficiency, dtype=np.float64)
    eta_d = np.asarray(discharge_efficiency, dtype=np.float64)
    return np.where(p >= 0, p * eta_c * hours, -p / eta_d * hours)


def throughput_cost(energy_wh: float | int, params: DegradationParams = DegradationParams()) -> Decimal:
    """Throughput degradation cost ($) of ``energy_wh`` Wh moved through a pack."""
    if energy_wh < 0:
        raise ValueError("energy through the pack is a magnitude (>= 0)")
    return money(Decimal(str(energy_wh)) / 1000 * params.pack_cost_per_kwh / (2 * params.cycle_life * params.rated_dod))


# --- Rainflow cycle counting ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CycleCount:
    """Rainflow cycles of a SoC trajectory: depth, mean SoC and count (1.0 full, 0.5 half) per cycle."""

    depth: FloatArray
    mean_soc: FloatArray
    count: FloatArray


def count_cycles(soc_fraction: Sequence[float] | FloatArray) -> CycleCount:
    """Rainflow-count a state-of-charge trajectory given as fractions of capacity (0..1)."""
    series = np.asarray(soc_fraction, dtype=np.float64)
    if series.ndim != 1:
        raise ValueError("a SoC trajectory is one-dimensional")
    if series.size and (series.min() < 0 or series.max() > 1):
        raise ValueError("SoC fractions must lie within 0..1")
    cycles: Iterable[tuple[float, float, float, int, int]] = rainflow.extract_cycles(series) if series.size > 1 else ()
    rows = np.array([(rng, mean, count) for rng, mean, count, _start, _end in cycles], dtype=np.float64)
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.float64)
        return CycleCount(depth=empty, mean_soc=empty, count=empty)
    return CycleCount(depth=rows[:, 0], mean_soc=rows[:, 1], count=rows[:, 2])


def equivalent_full_cycles(soc_fraction: Sequence[float] | FloatArray) -> float:
    """Equivalent full cycles of a trajectory: each half cycle of depth ``d`` counts ``0.5 * d**1.1``."""
    cycles = count_cycles(soc_fraction)
    # A full rainflow cycle is two half cycles of the same depth.
    return float(np.sum(cycles.count * cycles.depth**EFC_EXPONENT))
