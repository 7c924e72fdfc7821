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

4. **Cycle ageing cost** (:func:`cycle_aging_cost`): what settlement charges a vehicle and what bidding expects a bid
   to cost, both from this one function. The rainflow cycles of the SoC trajectory are weighted with the stress
   factors of Xu et al. 2018 (IEEE Trans. Smart Grid 9(2), reference sheet): depth
   ``Phi(d) = (1.40e5 d^-0.501 - 1.23e5)^-1``, mean SoC ``exp(1.04 (s - 0.5))``, temperature (Arrhenius-type,
   :func:`fleet.numerics.thermal.temperature_stress`). The model is calibrated on the vehicle's OWN rating: its pack
   reaches end of life after ``cycle_life`` full cycles of depth ``rated_dod`` at mean SoC 0.5 and
   :data:`RATED_TEMPERATURE_C`, so::

       life used = sum over cycles of count * Phi(d) * S_soc(s) * S_T(T) / (cycle_life * Phi(rated_dod))
       cost      = life used * pack_cost_per_kwh * capacity (kWh)

   One full cycle at the rated depth, mean SoC 0.5 and 25 degC therefore costs exactly what the throughput model
   charges for it (``pack cost * capacity / cycle_life``); shallower, hotter or fuller cycles cost what the stress
   factors say.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import numpy.typing as npt
import rainflow

from fleet.numerics.thermal import temperature_stress

FloatArray = npt.NDArray[np.float64]

MONEY_QUANTUM = Decimal("0.000001")  # $; costs per kWh are fractions of a cent

EFC_EXPONENT = 1.1

# Xu et al. 2018 cycle-depth stress Phi(d) = (K1 * d**K2 + K3) ** -1 and SoC stress exp(K_SOC * (s - SOC_REF)).
XU_DEPTH_K1 = 1.40e5
XU_DEPTH_K2 = -0.501
XU_DEPTH_K3 = -1.23e5
XU_SOC_K = 1.04
XU_SOC_REF = 0.5
# Cycle life is rated at 25 degC (IEC 62660-1 runs its cycle-life test at 25 degC; makers quote that figure).
RATED_TEMPERATURE_C = 25.0
# Below this depth the cost per unit of depth is held at its value here. Phi(d)/d grows as d**-0.5 without bound
# as d -> 0, beyond the cycle-life data the model was fitted on (*check*: Xu et al. fit depths of 10 % and more), so
# a 1-Wh metering-noise swing on a 60-kWh pack would cost ~46x its throughput cost. Held linear, a shallow cycle
# costs per kWh what a 10 % cycle does (0.84x the rated throughput cost).
SHALLOW_DEPTH = 0.1


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


# --- Cycle ageing cost (rainflow + Xu et al. 2018 stress, calibrated on the vehicle's rating) ----------------------


def depth_stress(depth: npt.ArrayLike) -> FloatArray:
    """Xu et al. 2018 cycle-depth stress ``Phi(d)``, held linear in ``d`` below :data:`SHALLOW_DEPTH` (0 at d=0)."""
    d = np.asarray(depth, dtype=np.float64)
    knee = 1.0 / (XU_DEPTH_K1 * SHALLOW_DEPTH**XU_DEPTH_K2 + XU_DEPTH_K3)
    deep = np.maximum(d, SHALLOW_DEPTH)
    full = 1.0 / (XU_DEPTH_K1 * deep**XU_DEPTH_K2 + XU_DEPTH_K3)
    return np.where(d >= SHALLOW_DEPTH, full, knee * np.clip(d, 0.0, None) / SHALLOW_DEPTH)


def soc_stress(mean_soc: npt.ArrayLike) -> FloatArray:
    """Xu et al. 2018 SoC stress ``exp(1.04 (s - 0.5))``: 1 at a mean SoC of 0.5."""
    return np.exp(XU_SOC_K * (np.asarray(mean_soc, dtype=np.float64) - XU_SOC_REF))


def rated_temperature_stress(temp_c: npt.ArrayLike) -> FloatArray:
    """Temperature stress relative to the rating temperature, never below 1.

    Cold is not rewarded: Xu's Arrhenius term would make a cold cycle cheaper, but cycling a cold pack risks
    lithium plating, which that term does not model; an operator paying for packs is charged at least the rated wear.
    """
    ratio = temperature_stress(temp_c) / temperature_stress(RATED_TEMPERATURE_C)
    return np.maximum(np.asarray(ratio, dtype=np.float64), 1.0)


@dataclass(frozen=True, slots=True)
class CycleWear:
    """The wear a SoC trajectory did to one pack: its rainflow cycles, the fraction of rated life used, the cost."""

    cycles: CycleCount
    life_used: float  # fraction of the pack's rated cycle life
    cost: Decimal  # $, quantised to MONEY_QUANTUM


def cycle_wear(
    soc_fraction: Sequence[float] | FloatArray,
    *,
    capacity_wh: int,
    params: DegradationParams,
    temperature_c: float | Sequence[float] | FloatArray = RATED_TEMPERATURE_C,
) -> CycleWear:
    """Rainflow-count ``soc_fraction`` and price each cycle with the vehicle's own rating (module docstring, 4.).

    ``temperature_c``: the pack temperature, one value or one per SoC sample; a cycle is stressed at the mean
    temperature of the samples it spans.
    """
    if capacity_wh <= 0:
        raise ValueError("a pack has a capacity > 0 Wh")
    series = np.asarray(soc_fraction, dtype=np.float64)
    temps = np.broadcast_to(np.asarray(temperature_c, dtype=np.float64), series.shape)
    cycles = count_cycles(series)
    if cycles.count.size == 0:
        return CycleWear(cycles=cycles, life_used=0.0, cost=money(0))
    spans = [(start, end) for _r, _m, _c, start, end in rainflow.extract_cycles(series)] if series.size > 1 else []
    cycle_temp = np.array([float(temps[a : b + 1].mean()) for a, b in spans], dtype=np.float64)
    damage = cycles.count * depth_stress(cycles.depth) * soc_stress(cycles.mean_soc)
    damage = damage * rated_temperature_stress(cycle_temp)
    life_used, cost = _priced(damage, capacity_wh=capacity_wh, params=params)
    return CycleWear(cycles=cycles, life_used=life_used, cost=cost)


@functools.lru_cache(maxsize=1024)
def _rated_damage(params: DegradationParams) -> float:
    """The damage of the pack's whole rated life (its cycle life at its rated depth): one per vehicle model."""
    return float(params.cycle_life) * float(depth_stress(float(params.rated_dod)))


def _priced(damage: FloatArray, *, capacity_wh: int, params: DegradationParams) -> tuple[float, Decimal]:
    """Share of the pack's rated life that the cycles' ``damage`` uses, and what that costs."""
    life_used = float(damage.sum() / _rated_damage(params))
    cost = Decimal(repr(life_used)) * params.pack_cost_per_kwh * Decimal(capacity_wh) / 1000
    return life_used, money(cost)


def cycle_aging_cost(
    soc_fraction: Sequence[float] | FloatArray,
    *,
    capacity_wh: int,
    params: DegradationParams,
    temperature_c: float | Sequence[float] | FloatArray = RATED_TEMPERATURE_C,
) -> Decimal:
    """$ of pack wear of a SoC trajectory: THE degradation cost, used by settlement and by bidding alike."""
    return cycle_wear(soc_fraction, capacity_wh=capacity_wh, params=params, temperature_c=temperature_c).cost


def marginal_cost_per_kwh(
    *,
    capacity_wh: int,
    params: DegradationParams,
    soc: float = XU_SOC_REF,
    temperature_c: float = RATED_TEMPERATURE_C,
    depth: float = SHALLOW_DEPTH,
) -> Decimal:
    """$ per kWh through the pack of one full cycle of ``depth`` around ``soc`` at ``temperature_c``, priced by
    :func:`cycle_aging_cost`: the linear rate a bid optimiser can use for the cycling that capacity held implies."""
    if capacity_wh <= 0:
        raise ValueError("a pack has a capacity > 0 Wh")
    low = min(max(soc - depth / 2, 0.0), 1.0 - depth)
    high = low + depth
    # The trace low -> high -> low is two half cycles, each of range |high - low| around (low + high) / 2: what
    # cycle_wear's rainflow count finds on it, priced by the same stresses, without running the count (the dispatch
    # state prices every plugged-in car at each reload; the count was most of that reload's CPU).
    half = np.array([0.5, 0.5]) * depth_stress(abs(high - low)) * soc_stress(0.5 * (low + high))
    damage = half * rated_temperature_stress(temperature_c)
    _, cost = _priced(damage, capacity_wh=capacity_wh, params=params)
    return money(cost / (Decimal(repr(2 * depth)) * Decimal(capacity_wh) / 1000))
