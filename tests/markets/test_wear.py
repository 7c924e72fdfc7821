"""A bid's expected pack wear and its settled wear are one function of the SoC trace: same trace, same money."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest

from fleet.numerics.degradation import DegradationParams
from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser import BidProblem, ProductSpec, VehiclePlan
from markets.optimiser.wear import expected_vehicle_wear, planned_soc_trace
from markets.regulation.settlement import PackTrace, RegulationTerms, VehicleMetering, settle_award_hour

START = datetime(2025, 7, 1, tzinfo=UTC)
VAN = DegradationParams(pack_cost_per_kwh=Decimal("120"), cycle_life=2500, rated_dod=Decimal("0.8"))


def van() -> VehicleSnapshot:
    # 50 kWh at 50 %, lossless (so planned pack energy is grid energy), its own $120/kWh, 2,500 cycles at 80 %
    return VehicleSnapshot(
        vehicle_id=7, capacity_wh=50_000, soc_wh=25_000, floor_wh=10_000, max_charge_w=100_000,
        max_discharge_w=100_000, charge_efficiency=1.0, discharge_efficiency=1.0, temperature_c=25.0,
        degradation=VAN,
    )  # fmt: skip


def test_a_bids_expected_wear_is_what_settlement_charges_for_the_same_trace() -> None:
    # given a plan holding 100 kW of regulation for two hours, expected to activate 10 % of it each way per hour
    problem = BidProblem(
        start=START,
        step_s=3600,
        steps=2,
        vehicles=[van()],
        products=[ProductSpec(code="reg", direction="symmetric", prices=[10.0, 10.0], up_activation=0.1,
                              down_activation=0.1)],
    )  # fmt: skip
    zero = np.zeros(2)
    plan = VehiclePlan(vehicle_id=7, charge_w=zero, discharge_w=zero, reserved_w={"reg": np.full(2, 100_000.0)})
    # then each hour swings the pack 10 kWh down and back: SoC 0.5 -> 0.3 -> 0.5 -> 0.3 -> 0.5
    trace = (0.5, 0.3, 0.5, 0.3, 0.5)
    assert planned_soc_trace(problem, van(), plan).tolist() == pytest.approx(trace)
    expected = expected_vehicle_wear(problem, van(), plan)
    # and settlement, given the same trace metered for the same van, charges the same money
    metered = VehicleMetering(
        vehicle_id=7, owner="acme", response_wh=0, energy=(),
        pack=PackTrace(soc_fraction=trace, temperature_c=(25.0,) * 5, capacity_wh=50_000, params=VAN),
    )  # fmt: skip
    terms = RegulationTerms(awarded_w=100_000, hours=Decimal(2), capacity_price=Decimal(0))
    settled = settle_award_hour(terms=terms, score=1, vehicles=[metered], energy_prices={})
    assert settled.exact.degradation == expected
    # by hand: rainflow gives four half cycles of 0.2 at mean 0.4 = two full cycles; one rated cycle of the van
    # costs $120 x 50 / 2,500 = $2.40; depth stress 33,559.690 / 190,553.756 = 0.1761167; SoC stress
    # exp(1.04 x -0.1) = 0.9012253 -> 2 x $2.40 x 0.1761167 x 0.9012253 = $0.761860 -> $0.76
    assert expected == pytest.approx(Decimal("0.761860"), abs=Decimal("0.000002"))
    assert settled.amounts.degradation == Decimal("0.76")
