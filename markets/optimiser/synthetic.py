"""Synthetic fleets and price days for tests and benchmarks (seeded, reproducible)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser.problem import ProductSpec

# (capacity kWh, AC charge/discharge kW) of common V2G-capable models (ev_specs_v2g_enabled2024.json ranges)
MODELS = [(60_000, 11_000, 11_000), (77_000, 11_000, 11_000), (40_000, 7_400, 7_400), (100_000, 22_000, 11_000)]


def random_fleet(n: int, *, start: datetime, seed: int = 1, horizon_h: float = 24.0) -> list[VehicleSnapshot]:
    rng = random.Random(seed)
    fleet = []
    for i in range(n):
        cap, charge, discharge = rng.choice(MODELS)
        soc = int(cap * rng.uniform(0.15, 0.9))
        departure = None if rng.random() < 0.15 else start + timedelta(hours=rng.uniform(0.5, horizon_h + 6))
        fleet.append(
            VehicleSnapshot(
                vehicle_id=i + 1,
                capacity_wh=cap,
                soc_wh=soc,
                floor_wh=int(cap * 0.2),
                max_charge_w=charge,
                max_discharge_w=discharge,
                charge_efficiency=rng.choice([0.9, 0.92, 0.95]),
                discharge_efficiency=rng.choice([0.9, 0.92, 0.95]),
                departure=departure,
                target_wh=int(cap * rng.uniform(0.5, 0.95)),
                node="depot" if rng.random() < 0.5 else "default",
            )
        )
    return fleet


def pjm_like_prices(hours: int, *, seed: int = 7, base: float = 12.0) -> list[float]:
    """An hourly $/MW-h profile with an evening peak and noise (benchmarks only; real runs use imported prices)."""
    rng = random.Random(seed)
    out = []
    for hr in range(hours):
        hod = hr % 24
        peak = 2.5 if 16 <= hod <= 20 else (1.4 if 7 <= hod <= 15 else 0.6)
        out.append(round(base * peak * rng.uniform(0.6, 1.4), 2))
    return out


def depot_load(steps: int, *, step_h: float = 0.25, seed: int = 3, base_w: float = 250_000) -> list[float]:
    rng = random.Random(seed)
    out = []
    for t in range(steps):
        hod = (t * step_h) % 24
        shape = 1.8 if 8 <= hod <= 11 or 17 <= hod <= 19 else 1.0
        out.append(base_w * shape * rng.uniform(0.9, 1.1))
    return out


def pjm_like_products(
    n_vehicles: int, steps: int = 96, *, min_w: int = 100_000, increment_w: int = 100_000
) -> list[ProductSpec]:
    """Reg-D and synchronised reserve at ``pjm_like_prices``, plus depot peak shaving sized for ``n_vehicles``,
    over ``steps`` 15-min steps (the product set the optimiser tests and benchmark run against)."""
    hours = steps // 4
    return [
        ProductSpec("reg-d", "symmetric", pjm_like_prices(hours, base=25), 4, 0.25, 0.32, 0.25, min_w, increment_w),
        ProductSpec("sync-reserve", "up", pjm_like_prices(hours, seed=9), 4, 0.5, 0.005, 0.0, min_w, increment_w),
        ProductSpec(
            "peak-shaving",
            "up",
            [None] * steps,
            1,
            0.25,
            1.0,
            0.0,
            1000,
            1000,
            node="depot",
            site_load_w=depot_load(steps, base_w=4000 * n_vehicles),
            site_threshold_w=5000 * n_vehicles,
            demand_charge_usd_per_w=0.015,
        ),
    ]
