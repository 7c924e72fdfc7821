"""Battery degradation cost: throughput model and cycle-depth (rainflow) model. Pure Python/numpy, no Django.

Money crosses this module's boundary as :class:`~decimal.Decimal` (quantised to :data:`MONEY_QUANTUM`); the physics
is float. Used by bidding (marginal cost of offering flexibility) and settlement (cost of what was dispatched).

1. **Throughput model** (linear in energy)::

       c = pack_cost_per_kwh / (2 * cycle_life * DoD)            [$ per kWh through the battery]

   A cycle of depth DoD moves ``2 * DoD`` kWh per kWh of capacity (in and out); over ``cycle_life`` cycles the pack
   wears out, so each kWh through it costs the pack cost spread over that throughput. Worked example (the reference
   sheet, ``shared/reference/grid-and-market-figures.md``): $150/kWh, 3,000 cycles at 80 % DoD =>
   150 / (2 * 3000 * 0.8) = $0.03125/kWh. Energy "through the battery" is measured at the pack: grid energy times
   ``eta_c`` when charging, divided by ``eta_d`` when discharging.

2. **Cycle-depth model**, B. Xu, A. Oudalov, A. Ulbig, G. Andersson, D. S. Kirschen, "Modeling of Lithium-Ion
   Battery Degradation for Cell Life Assessment", IEEE Trans. Smart Grid 9(2), 2018. Cycles are counted from the
   SoC trajectory with the rainflow algorithm (``rainflow`` package, ASTM E1049); a cycle of depth ``d`` at mean SoC
   ``s`` and temperature ``T`` (K) does damage::

       depth stress  Phi(d) = (1.40e5 * d**-0.501 - 1.23e5) ** -1
       SoC stress    S(s)   = exp(1.04 * (s - 0.5))
       temp. stress  S(T)   = exp(0.0693 * (T - 293) * 293 / T)
       damage       f_c    = sum over cycles of count * Phi(d) * S(s) * S(T)      (half cycles count 0.5)

   ``f_c`` is the fraction of capacity lost (linearised: small ``f_c``, the SEI formation term neglected). The pack
   reaches end of life when it has lost ``1 - EOL`` (20 % for EOL = 80 %), so the cost of a trajectory is
   ``replacement cost * f_c / (1 - EOL)``. With T = 293 K the model gives Phi(0.8) = 2.98e-5 per cycle, i.e.
   ~6,700 cycles at 80 % DoD to 80 % capacity, consistent with the throughput model's cycle life order of magnitude.
   ``1 / Phi(d)`` is the fit's cycle life at depth ``d``; damage per unit of depth is lowest near ``d = 0.32`` and
   highest for full cycles, which is why the allocator spreads depth across packs rather than cycling a few deeply.

3. **Equivalent full cycles** (reference sheet): a half cycle of depth ``d`` counts ``0.5 * d**1.1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial

import numpy as np
import numpy.typing as npt
import rainflow

FloatArray = npt.NDArray[np.float64]

MONEY_QUANTUM = Decimal("0.000001")  # $; costs per kWh are fractions of a cent

# Xu et al. 2018, NMC cell fit.
DEPTH_K1 = 1.40e5
DEPTH_K2 = -0.501
DEPTH_K3 = -1.23e5
SOC_K = 1.04
SOC_REF = 0.5
TEMP_K = 0.0693
TEMP_REF_K = 293.0
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
    end_of_life_capacity: Decimal = Decimal("0.8")

    def __post_init__(self) -> None:
        if self.pack_cost_per_kwh < 0 or self.cycle_life <= 0 or not (0 < self.rated_dod <= 1):
            raise ValueError("pack cost >= 0, cycle life > 0 and 0 < DoD <= 1 are required")
        if not (0 < self.end_of_life_capacity < 1):
            raise ValueError("end_of_life_capacity must be within (0, 1)")


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


def dispatch_throughput_cost(
    power_w: npt.ArrayLike,
    duration_s: float,
    *,
    charge_efficiency: npt.ArrayLike = 0.92,
    discharge_efficiency: npt.ArrayLike = 0.92,
    params: DegradationParams = DegradationParams(),
) -> list[Decimal]:
    """Per-vehicle throughput cost ($) of one dispatch (e.g. an ``Allocation``'s powers)."""
    energy = pack_throughput_wh(
        power_w, duration_s, charge_efficiency=charge_efficiency, discharge_efficiency=discharge_efficiency
    )
    return [throughput_cost(float(e), params) for e in np.atleast_1d(energy)]


# --- Cycle-depth (rainflow) model -----------------------------------------------------------------------------------


def depth_stress(depth: npt.ArrayLike) -> FloatArray:
    """Xu et al. depth stress Phi(d): capacity fraction lost per full cycle of depth ``d`` (0 < d <= 1)."""
    d = np.clip(np.asarray(depth, dtype=np.float64), 1e-9, 1.0)
    return 1.0 / (DEPTH_K1 * d**DEPTH_K2 + DEPTH_K3)


def soc_stress(mean_soc: npt.ArrayLike) -> FloatArray:
    return np.exp(SOC_K * (np.asarray(mean_soc, dtype=np.float64) - SOC_REF))


def temperature_stress_k(temperature_k: npt.ArrayLike) -> FloatArray:
    t = np.asarray(temperature_k, dtype=np.float64)
    return np.exp(TEMP_K * (t - TEMP_REF_K) * TEMP_REF_K / t)


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


def cycle_damage(soc_fraction: Sequence[float] | FloatArray, *, temperature_c: float = 25.0) -> float:
    """Capacity fraction lost by a SoC trajectory (Xu et al. 2018; see the module docstring)."""
    cycles = count_cycles(soc_fraction)
    if cycles.depth.size == 0:
        return 0.0
    stress = depth_stress(cycles.depth) * soc_stress(cycles.mean_soc)
    return float(np.sum(cycles.count * stress) * temperature_stress_k(temperature_c + 273.15))


def cycle_depth_cost(
    soc_fraction: Sequence[float] | FloatArray,
    *,
    capacity_wh: int,
    temperature_c: float = 25.0,
    params: DegradationParams = DegradationParams(),
) -> Decimal:
    """Cost ($) of a SoC trajectory: ``replacement cost * damage / (1 - EOL capacity)``."""
    damage = Decimal(repr(cycle_damage(soc_fraction, temperature_c=temperature_c)))
    replacement = params.pack_cost_per_kwh * Decimal(capacity_wh) / 1000
    return money(replacement * damage / (1 - params.end_of_life_capacity))


def equivalent_full_cycles(soc_fraction: Sequence[float] | FloatArray) -> float:
    """Equivalent full cycles of a trajectory: each half cycle of depth ``d`` counts ``0.5 * d**1.1``."""
    cycles = count_cycles(soc_fraction)
    # A full rainflow cycle is two half cycles of the same depth.
    return float(np.sum(cycles.count * cycles.depth**EFC_EXPONENT))


def marginal_cycle_depth_cost(
    history_soc: Sequence[float] | FloatArray,
    added_soc: Sequence[float] | FloatArray,
    *,
    capacity_wh: int,
    temperature_c: float = 25.0,
    params: DegradationParams = DegradationParams(),
) -> Decimal:
    """Cost ($) a dispatch adds: cost of ``history + added`` minus cost of ``history`` alone.

    Rainflow is not additive (a new swing can close a cycle opened earlier), so the marginal cost of a dispatch is
    the difference of the whole-trajectory costs, e.g. today's SoC samples with and without the dispatch's samples.
    """
    before = np.asarray(history_soc, dtype=np.float64)
    after = np.concatenate((before, np.asarray(added_soc, dtype=np.float64)))
    cost = partial(cycle_depth_cost, capacity_wh=capacity_wh, temperature_c=temperature_c, params=params)
    return cost(after) - cost(before)
