"""Regulation settlement arithmetic, per hour and per award, attributed to vehicles and fleet owners. Pure, no Django.

Credits (PJM, ``grid-and-market-figures.md``)::

    capacity credit     = MW x hours x capacity price (RMCCP, $/MW-h) x score
    performance credit  = MW x hours x mileage ratio x performance price (RMPCP, $/MW-h) x score
    energy              = sum over intervals of (injected - withdrawn) MWh x interval price ($/MWh)
    degradation         = each vehicle's own pack wear: the cycle-ageing cost of its metered SoC trace over the
                          period under its own pack cost, cycle life and rated DoD
                          (``fleet.numerics.degradation.cycle_aging_cost``, the function bids are costed with);
                          a charge point with no known vehicle: throughput cost at the default parameters
    penalty             = reserve shortfall penalties charged in the period (``markets.reserve.penalty``)
    net                 = capacity + performance + energy - degradation - penalty

Numbers: energy is integer Wh throughout; money is ``Decimal``. Each award-hour component is computed exactly
(Decimal arithmetic on exact inputs, no float) and then rounded once to the cent with ``ROUND_HALF_EVEN`` -- banker's
rounding, so rounding errors over thousands of hourly lines do not drift one way. The score enters as a Decimal with
:data:`SCORE_PLACES` places (the precision PJM's template reports).

Attribution: the award-hour cents are split over the vehicles so that the vehicle lines add up to the award line
exactly (largest-remainder method on the exact shares; ties go to the lower vehicle id):

* capacity and performance credits pro rata of each vehicle's regulation work -- the integral of the magnitude of
  its metered response, Wh (equal shares if no vehicle moved at all);
* energy: each vehicle's own metered import/export at the interval prices (exact per vehicle);
* degradation: each vehicle's own pack wear (its SoC trace, its battery);
* penalty: pro rata of the same key as the credits (who was paid for holding the reserve pays for not delivering).

Each line names its fleet owner; an owner's revenue is the sum of its vehicles' stored lines.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from fleet.numerics.degradation import DegradationParams, cycle_aging_cost, throughput_cost

CENT = Decimal("0.01")
SCORE_PLACES = Decimal("0.000001")
WH_PER_MWH = Decimal(1_000_000)
W_PER_MW = Decimal(1_000_000)


class SettlementError(ValueError):
    """Inputs settlement cannot use (a missing price, negative energy, a score outside 0..1)."""


def to_cents(amount: Decimal) -> Decimal:
    """Round a money amount to the cent, half to even."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def score_decimal(score: float | Decimal) -> Decimal:
    """The composite score as settlement uses it: a Decimal with six places, half to even."""
    value = Decimal(str(score)).quantize(SCORE_PLACES, rounding=ROUND_HALF_EVEN)
    if not Decimal(0) <= value <= Decimal(1):
        raise SettlementError(f"a performance score lies within 0..1, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class RegulationTerms:
    """One award over one settlement interval (normally an hour) and the prices it clears at."""

    awarded_w: int
    hours: Decimal
    capacity_price: Decimal  # $/MW-h (RMCCP)
    performance_price: Decimal = Decimal(0)  # $/MW-h of mileage-weighted capacity (RMPCP)
    mileage_ratio: Decimal = Decimal(1)  # RegD mileage / RegA mileage for the hour

    def __post_init__(self) -> None:
        if self.awarded_w < 0 or self.hours <= 0 or self.mileage_ratio < 0:
            raise SettlementError("awarded W >= 0, hours > 0 and mileage ratio >= 0 are required")


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    """Metered energy of one vehicle in one price interval (integer Wh, grid side, both >= 0)."""

    interval_start: datetime
    import_wh: int  # withdrawn from the grid (charging)
    export_wh: int  # injected into the grid (discharging)

    def __post_init__(self) -> None:
        if self.import_wh < 0 or self.export_wh < 0:
            raise SettlementError("metered import and export are magnitudes (>= 0 Wh)")


@dataclass(frozen=True, slots=True)
class PackTrace:
    """A vehicle's pack over the settled period, from its meter: SoC (fraction of capacity) and pack temperature
    (degC) at the same instants, with the pack's capacity and its own rating."""

    soc_fraction: tuple[float, ...]
    temperature_c: tuple[float, ...]
    capacity_wh: int
    params: DegradationParams

    def __post_init__(self) -> None:
        if len(self.soc_fraction) != len(self.temperature_c) or self.capacity_wh <= 0:
            raise SettlementError("a pack trace has one temperature per SoC sample and a capacity > 0")


@dataclass(frozen=True, slots=True)
class VehicleMetering:
    """What the meters say one vehicle delivered during the award interval."""

    vehicle_id: int
    owner: Hashable
    response_wh: int  # integral of |regulation response|: the share key for capacity and performance credits
    energy: tuple[IntervalEnergy, ...]
    charge_efficiency: float = 0.92
    discharge_efficiency: float = 0.92
    pack: PackTrace | None = None  # None: no vehicle known at this charge point

    @property
    def import_wh(self) -> int:
        return sum(e.import_wh for e in self.energy)

    @property
    def export_wh(self) -> int:
        return sum(e.export_wh for e in self.energy)

    @property
    def pack_throughput_wh(self) -> int:
        """Energy through the pack (Wh): import x eta_c + export / eta_d, rounded to the Wh."""
        return round(self.import_wh * self.charge_efficiency + self.export_wh / self.discharge_efficiency)


DegradationCost = Callable[[VehicleMetering], Decimal]


def throughput_degradation(params: DegradationParams | None = None) -> DegradationCost:
    """Degradation cost of a vehicle's pack throughput under the throughput model (``fleet.numerics.degradation``)."""
    chosen = params or DegradationParams()

    def cost(vehicle: VehicleMetering) -> Decimal:
        return throughput_cost(vehicle.pack_throughput_wh, chosen)

    return cost


def vehicle_degradation(default: DegradationParams | None = None) -> DegradationCost:
    """Each vehicle's own wear (:func:`~fleet.numerics.degradation.cycle_aging_cost` of its pack trace, its own
    rating); a charge point with no known vehicle, hence no capacity to cycle, at the throughput cost of ``default``.
    """
    fallback = throughput_degradation(default)

    def cost(vehicle: VehicleMetering) -> Decimal:
        pack = vehicle.pack
        if pack is None:
            return fallback(vehicle)
        return cycle_aging_cost(
            pack.soc_fraction, capacity_wh=pack.capacity_wh, params=pack.params, temperature_c=pack.temperature_c
        )

    return cost


@dataclass(frozen=True, slots=True)
class Amounts:
    """The components of a settlement line and their net, $ (signs: credits +, degradation and penalty are costs +)."""

    capacity: Decimal
    performance: Decimal
    energy: Decimal
    degradation: Decimal
    penalty: Decimal = Decimal("0.00")

    @property
    def net(self) -> Decimal:
        return self.capacity + self.performance + self.energy - self.degradation - self.penalty

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.capacity + other.capacity,
            self.performance + other.performance,
            self.energy + other.energy,
            self.degradation + other.degradation,
            self.penalty + other.penalty,
        )


ZERO = Amounts(Decimal("0.00"), Decimal("0.00"), Decimal("0.00"), Decimal("0.00"))


@dataclass(frozen=True, slots=True)
class VehicleLine:
    vehicle_id: int
    owner: Hashable
    amounts: Amounts
    response_wh: int
    import_wh: int
    export_wh: int
    pack_throughput_wh: int


@dataclass(frozen=True, slots=True)
class AwardSettlement:
    """An award-interval settlement: rounded totals, the exact figures they came from, and the vehicle lines."""

    score: Decimal
    amounts: Amounts
    exact: Amounts
    vehicles: tuple[VehicleLine, ...] = field(default_factory=tuple)


def capacity_credit(terms: RegulationTerms, score: Decimal) -> Decimal:
    """Exact capacity credit: MW x hours x RMCCP x score."""
    return Decimal(terms.awarded_w) / W_PER_MW * terms.hours * terms.capacity_price * score


def performance_credit(terms: RegulationTerms, score: Decimal) -> Decimal:
    """Exact performance credit: MW x hours x mileage ratio x RMPCP x score."""
    mw = Decimal(terms.awarded_w) / W_PER_MW
    return mw * terms.hours * terms.mileage_ratio * terms.performance_price * score


def energy_amount(energy: Sequence[IntervalEnergy], prices: Mapping[datetime, Decimal]) -> Decimal:
    """Exact energy value: sum of (export - import) Wh / 1e6 x $/MWh; withdrawing costs, injecting earns."""
    total = Decimal(0)
    for row in energy:
        try:
            price = prices[row.interval_start]
        except KeyError as exc:
            raise SettlementError(
                f"no energy price for the interval starting {row.interval_start.isoformat()}"
            ) from exc
        total += Decimal(row.export_wh - row.import_wh) / WH_PER_MWH * price
    return total


def split_cents(total: Decimal, exact_shares: Sequence[Decimal]) -> list[Decimal]:
    """Split ``total`` (whole cents) into parts that sum to it exactly, each within a cent of its exact share.

    Largest-remainder method: floor every exact share to the cent, then hand the cents still missing to the shares
    with the largest remainders, ties to the earlier position. ``exact_shares`` must sum to within half a cent of
    ``total`` (they do when ``total`` is their sum rounded).
    """
    if not exact_shares:
        return []
    floors = [share.quantize(CENT, rounding=ROUND_FLOOR) for share in exact_shares]
    missing = int((total - sum(floors, Decimal(0))) / CENT)
    if not 0 <= missing <= len(floors):
        raise SettlementError(f"shares summing to {sum(exact_shares)} cannot make up {total}")
    order = sorted(range(len(floors)), key=lambda i: (-(exact_shares[i] - floors[i]), i))
    for i in order[:missing]:
        floors[i] += CENT
    return floors


def _pro_rata(amount: Decimal, keys: Sequence[int]) -> list[Decimal]:
    total_key = sum(keys)
    if total_key == 0:
        return [amount / len(keys)] * len(keys)
    return [amount * Decimal(k) / Decimal(total_key) for k in keys]


def settle_award_hour(
    *,
    terms: RegulationTerms,
    score: float | Decimal,
    vehicles: Sequence[VehicleMetering],
    energy_prices: Mapping[datetime, Decimal],
    degradation: DegradationCost | None = None,
    penalty: Decimal = Decimal(0),
) -> AwardSettlement:
    """Settle one award over one interval and attribute every cent to a vehicle (see the module docstring).

    ``score`` is the composite performance score of the interval (pass 1 for products that are not scored).
    ``penalty``: the exact reserve shortfall penalties charged in the interval (0 for other products).
    Vehicles are attributed in ascending ``vehicle_id`` order, which makes the cent split deterministic.
    """
    settled_score = score_decimal(score)
    cost_of = degradation or vehicle_degradation()
    fleet = sorted(vehicles, key=lambda v: v.vehicle_id)
    if len({v.vehicle_id for v in fleet}) != len(fleet):
        raise SettlementError("a vehicle appears twice in one award settlement")

    exact_capacity = capacity_credit(terms, settled_score)
    exact_performance = performance_credit(terms, settled_score)
    vehicle_energy = [energy_amount(v.energy, energy_prices) for v in fleet]
    wear_costs = [cost_of(v) for v in fleet]
    if penalty < 0:
        raise SettlementError("a penalty is a cost (>= 0)")
    exact = Amounts(
        exact_capacity,
        exact_performance,
        sum(vehicle_energy, Decimal(0)),
        sum(wear_costs, Decimal(0)),
        penalty,
    )
    rounded = Amounts(
        to_cents(exact.capacity),
        to_cents(exact.performance),
        to_cents(exact.energy),
        to_cents(exact.degradation),
        to_cents(exact.penalty),
    )
    if not fleet:
        return AwardSettlement(score=settled_score, amounts=rounded, exact=exact)

    keys = [v.response_wh for v in fleet]
    capacity = split_cents(rounded.capacity, _pro_rata(exact.capacity, keys))
    performance = split_cents(rounded.performance, _pro_rata(exact.performance, keys))
    energy = split_cents(rounded.energy, vehicle_energy)
    wear = split_cents(rounded.degradation, wear_costs)
    charged = split_cents(rounded.penalty, _pro_rata(exact.penalty, keys))
    lines = tuple(
        VehicleLine(
            vehicle_id=v.vehicle_id,
            owner=v.owner,
            amounts=Amounts(capacity[i], performance[i], energy[i], wear[i], charged[i]),
            response_wh=v.response_wh,
            import_wh=v.import_wh,
            export_wh=v.export_wh,
            pack_throughput_wh=v.pack_throughput_wh,
        )
        for i, v in enumerate(fleet)
    )
    return AwardSettlement(score=settled_score, amounts=rounded, exact=exact, vehicles=lines)
