"""Hypothesis strategies for random fleets and a hand-set car (shared by the VPP core tests)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from fleet.numerics.snapshot import VehicleSnapshot

NOW = datetime(2025, 6, 2, 6, 0, tzinfo=UTC)


def car(vehicle_id: int = 1, **overrides: Any) -> VehicleSnapshot:
    """A lossless 60 kWh car at half charge, 20 % floor, 10 kW both ways; ``overrides`` change any field."""
    base = VehicleSnapshot(
        vehicle_id=vehicle_id,
        capacity_wh=60_000,
        soc_wh=30_000,
        floor_wh=12_000,
        max_charge_w=10_000,
        max_discharge_w=10_000,
        charge_efficiency=1.0,
        discharge_efficiency=1.0,
    )
    return replace(base, **overrides)


@st.composite
def snapshots(draw: st.DrawFn, vehicle_id: int = 0) -> VehicleSnapshot:
    capacity = draw(st.integers(10_000, 120_000))
    has_departure = draw(st.booleans())
    return VehicleSnapshot(
        vehicle_id=vehicle_id,
        capacity_wh=capacity,
        soc_wh=draw(st.integers(0, capacity)),
        floor_wh=draw(st.integers(0, capacity // 2)),
        target_wh=draw(st.integers(0, capacity)),
        max_charge_w=draw(st.integers(0, 22_000)),
        max_discharge_w=draw(st.integers(0, 22_000)),
        charge_efficiency=draw(st.floats(0.8, 1.0)),
        discharge_efficiency=draw(st.floats(0.8, 1.0)),
        departure=NOW + timedelta(seconds=draw(st.integers(-3_600, 86_400))) if has_departure else None,
        state_of_health=draw(st.floats(0.6, 1.0)),
        temperature_c=draw(st.floats(-25.0, 60.0)),
        cycles_today=draw(st.floats(0.0, 3.0)),
        node=draw(st.sampled_from(["north", "south"])),
    )


@st.composite
def fleets(draw: st.DrawFn, min_size: int = 1, max_size: int = 25) -> list[VehicleSnapshot]:
    size = draw(st.integers(min_size, max_size))
    return [draw(snapshots(vehicle_id=i + 1)) for i in range(size)]
