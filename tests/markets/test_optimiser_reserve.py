"""Reserve co-optimised with regulation: the same kW and kWh are never offered twice, and a car holding reserve
keeps the energy of a full deployment (its product's sustain time) above its floor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser import BidProblem, ProductSpec, deliverability_violations, get_scheduler

START = datetime(2026, 7, 1, 14, tzinfo=UTC)


def _fleet() -> list[VehicleSnapshot]:
    """20 cars, 60 kWh at 30 % over a 20 % floor (6 kWh above it each), 11 kW both ways, lossless, not leaving."""
    return [
        VehicleSnapshot(
            vehicle_id=i,
            capacity_wh=60_000,
            soc_wh=18_000,
            floor_wh=12_000,
            target_wh=18_000,
            max_charge_w=11_000,
            max_discharge_w=11_000,
            charge_efficiency=1.0,
            discharge_efficiency=1.0,
        )
        for i in range(1, 21)
    ]


@pytest.mark.parametrize("scheduler", ["highs", "greedy"])
def test_reserve_and_regulation_share_the_fleets_power_and_energy_without_counting_them_twice(scheduler: str):
    # Given regulation (symmetric, 15 min sustain) and synchronized reserve (up, 30 min sustain), both at $40/MW-h
    products = [
        ProductSpec("reg-d", "symmetric", [40.0] * 2, 4, sustain_h=0.25, min_w=1_000, increment_w=1_000),
        ProductSpec("sync-reserve", "up", [40.0] * 2, 4, sustain_h=0.5, min_w=1_000, increment_w=1_000),
    ]
    problem = BidProblem(start=START, step_s=900, steps=8, vehicles=_fleet(), products=products, energy_price=[0.0] * 8)
    # When the optimiser bids the first hour
    schedule = get_scheduler(scheduler).schedule(problem)
    reg, reserve = schedule.quantity_w["reg-d"][0], schedule.quantity_w["sync-reserve"][0]
    # Then at the hour's start a full deployment of both at once draws no more than the fleet holds above its floors:
    # 20 x 6,000 Wh = 120,000 Wh >= reg x 0.25 h + reserve x 0.5 h
    assert reg * 0.25 + reserve * 0.5 <= 120_000
    # and their up power fits the cars' discharge plus whatever they were charging (each <= 11 + 11 kW)
    assert reg + reserve <= 20 * 22_000
    assert reg + reserve > 0
    # and car by car, every car keeps its floor after a full activation of all it holds
    assert deliverability_violations(problem, schedule) == []
