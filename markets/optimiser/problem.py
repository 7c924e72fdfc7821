"""The bid-optimisation problem and its answer, as plain data (no Django): the optimisers are pure functions.

Sign and unit conventions follow ``fleet.numerics.snapshot``: W and Wh, positive = charging. Prices are per MW of
capacity per hour (``$/MW-h``); the energy price is per MWh. A product's market interval may be longer than the
problem's interval (PJM hours over a 15-minute grid): its quantity is then held constant over the sub-intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fleet.numerics.snapshot import VehicleSnapshot

Direction = Literal["up", "down", "symmetric"]
FloatArray = npt.NDArray[np.float64]

# Reference throughput cost: $150/kWh pack, 3,000 cycles at 80 % DoD -> c = 150 / (2 * 3000 * 0.8) $/kWh
# (grid-and-market-figures.md, "Battery degradation"). Used when the caller passes no per-vehicle cost.
DEFAULT_DEGRADATION_USD_PER_WH = 150.0 / (2 * 3000 * 0.8) / 1000.0


class ProblemError(ValueError):
    """The problem is malformed (e.g. prices of the wrong length); never raised for a merely hard problem."""


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """One product as the optimiser sees it.

    ``prices`` has one forecast price per market interval ($/MW-h); ``None`` means not biddable then.
    ``up_activation`` / ``down_activation``: expected grid energy per W of capacity per hour delivered in each
    direction (regulation drift, reserve deployments); ``sustain_h``: full activation must be holdable this long,
    so that much energy is kept in reserve whenever capacity is held.
    Peak shaving (``site_load_w`` set) is valued by the demand charge it avoids, not by ``prices``.
    """

    code: str
    direction: Direction
    prices: Sequence[float | None]
    market_interval_steps: int = 1
    sustain_h: float = 0.25
    up_activation: float = 0.0
    down_activation: float = 0.0
    min_w: int = 0
    increment_w: int = 1
    node: str | None = None  # only vehicles at this node may serve it (depot products); None = all
    site_load_w: Sequence[float] | None = None  # per problem interval, site meter without the fleet
    site_threshold_w: float = 0.0
    demand_charge_usd_per_w: float = 0.0  # avoided cost per W of peak above the threshold

    @property
    def up(self) -> bool:
        return self.direction in ("up", "symmetric")

    @property
    def down(self) -> bool:
        return self.direction in ("down", "symmetric")

    @property
    def is_peak_shaving(self) -> bool:
        return self.site_load_w is not None


@dataclass(frozen=True, slots=True)
class BidProblem:
    """Bid the fleet ``vehicles`` (state at ``start``) into ``products`` over ``steps`` intervals of ``step_s``.

    ``first_biddable_step``: intervals before it carry no bids (they are before the delivery window: the fleet just
    follows its baseline). ``energy_price`` ($/MWh) per interval prices the fleet's own charging and the expected
    energy of activations; ``degradation_usd_per_wh`` maps vehicle id to its throughput cost.
    """

    start: datetime
    step_s: int
    steps: int
    vehicles: Sequence[VehicleSnapshot]
    products: Sequence[ProductSpec]
    first_biddable_step: int = 0
    energy_price: Sequence[float] | None = None
    degradation_usd_per_wh: dict[int, float] | None = None
    max_clusters: int = 24
    time_limit_s: float = 8.0
    baseline_discharge: bool = False  # energy arbitrage in the operating point (off: the fleet sells services)

    @property
    def step_h(self) -> float:
        return self.step_s / 3600.0

    def step_start(self, t: int) -> datetime:
        return self.start + timedelta(seconds=self.step_s * t)

    def validate(self) -> None:
        if self.steps <= 0 or self.step_s <= 0:
            raise ProblemError("steps and step_s must be positive")
        for p in self.products:
            if p.market_interval_steps <= 0 or self.steps % p.market_interval_steps:
                raise ProblemError(f"{p.code}: {self.steps} steps is not a whole number of market intervals")
            if len(p.prices) != self.steps // p.market_interval_steps:
                raise ProblemError(
                    f"{p.code}: need {self.steps // p.market_interval_steps} prices, got {len(p.prices)}"
                )
            if p.increment_w <= 0 or p.min_w < 0:
                raise ProblemError(f"{p.code}: increment must be positive and minimum non-negative")
            if p.site_load_w is not None and len(p.site_load_w) != self.steps:
                raise ProblemError(f"{p.code}: need {self.steps} site load values")
        if self.energy_price is not None and len(self.energy_price) != self.steps:
            raise ProblemError(f"energy_price: need {self.steps} values")
        ids = [v.vehicle_id for v in self.vehicles]
        if len(set(ids)) != len(ids):
            raise ProblemError("vehicle ids must be unique")
        for v in self.vehicles:
            if v.capacity_wh <= 0 or not 0 <= v.soc_wh <= v.capacity_wh or v.floor_wh < 0:
                raise ProblemError(f"vehicle {v.vehicle_id}: need 0 <= soc <= capacity and capacity > 0")
            if v.max_charge_w < 0 or v.max_discharge_w < 0:
                raise ProblemError(f"vehicle {v.vehicle_id}: power limits are magnitudes >= 0")


@dataclass(frozen=True, slots=True)
class ProductBid:
    product: str
    market_interval: int  # index in the product's own interval grid
    start: datetime
    end: datetime
    quantity_w: int
    price: float  # offer price, $/MW-h (or the demand charge for peak shaving)
    forecast_price: float | None


@dataclass(slots=True)
class VehiclePlan:
    """What one vehicle is asked to do per interval: operating point and capacity held per product (W)."""

    vehicle_id: int
    charge_w: FloatArray  # grid power drawn for charging, >= 0
    discharge_w: FloatArray  # grid power injected, >= 0
    reserved_w: dict[str, FloatArray]


@dataclass(slots=True)
class BidSchedule:
    """The optimiser's answer. ``quantity_w[code][m]`` is the bid in market interval m; ``envelope`` is the fleet
    flexibility it bid against (per interval: up/down W holdable, baseline W, energy in the packs Wh).
    ``revenue_usd`` = capacity revenue + peak value; ``objective_usd`` = revenue - ``cost_usd`` (degradation and
    energy bought, must-charge vehicles included)."""

    scheduler: str
    status: str
    bids: list[ProductBid]
    quantity_w: dict[str, list[int]]
    objective_usd: float
    revenue_usd: float
    cost_usd: float
    solve_s: float
    clusters: int
    envelope: dict[str, list[float]]
    solution: Any = None  # markets.optimiser.result.ClusterSolution: per-vehicle plans via solution.plan(id)
    notes: list[str] = field(default_factory=list)
    capacity_revenue_usd: float = 0.0  # forecast price x capacity bid, priced products only
    peak_value_usd: float = 0.0  # demand charge avoided vs the site without the fleet (may be negative)
    # Expected pack wear of the plan by the settlement's own function (markets.optimiser.wear), set by the caller.
    expected_wear_usd: Decimal = Decimal(0)

    def plan(self, vehicle_id: int) -> VehiclePlan | None:
        return None if self.solution is None else self.solution.plan(vehicle_id)


class Scheduler(Protocol):
    """A bid optimiser. Implementations must never offer more than the fleet can deliver (see ``verify``)."""

    name: str

    def schedule(self, problem: BidProblem) -> BidSchedule: ...
