"""Bid optimiser benchmark: time and objective for 1k / 10k vehicles x 96 x 15 min x 3 products (target < 10 s),
and revenue against a naive bid (a fixed share of the fleet's discharge power, split over the priced products,
at price 0) on the same prices. Run: python bench/markets_optimiser.py"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from markets.optimiser import BidProblem, ProductSpec, deliverability_violations, get_scheduler
from markets.optimiser.synthetic import depot_load, pjm_like_prices, random_fleet

START = datetime(2026, 7, 1, tzinfo=UTC)
TARGET_S = 10.0
NAIVE_SHARE = 0.3


def products(n: int) -> list[ProductSpec]:
    return [
        ProductSpec("reg-d", "symmetric", pjm_like_prices(24, base=25), 4, 0.25, 0.32, 0.25, 100_000, 100_000),
        ProductSpec("sync-reserve", "up", pjm_like_prices(24, seed=9), 4, 0.5, 0.005, 0.0, 100_000, 100_000),
        ProductSpec(
            "peak-shaving",
            "up",
            [None] * 96,
            1,
            0.25,
            1.0,
            0.0,
            1000,
            1000,
            node="depot",
            site_load_w=depot_load(96, base_w=4000 * n),
            site_threshold_w=5000 * n,
            demand_charge_usd_per_w=0.015,
        ),
    ]


def naive_revenue(problem: BidProblem) -> float:
    """Offer NAIVE_SHARE of the plugged-in fleet's discharge power every hour, half to each PJM product."""
    power = sum(v.max_discharge_w for v in problem.vehicles)
    revenue = 0.0
    for p in problem.products[:2]:
        q = (power * NAIVE_SHARE / 2) // p.increment_w * p.increment_w
        revenue += sum(price * q / 1e6 for price in p.prices if price)
    return revenue


def main() -> None:
    print(
        f"{'vehicles':>8} {'scheduler':>10} {'time s':>7} {'target':>7} {'clusters':>8} {'objective $':>12} "
        f"{'revenue $':>10} {'naive rev $':>11} {'violations':>10}"
    )
    for n in (1000, 10000):
        fleet = random_fleet(n, start=START, seed=11)
        problem = BidProblem(start=START, step_s=900, steps=96, vehicles=fleet, products=products(n))
        for name in ("highs", "greedy"):
            t0 = time.perf_counter()
            s = get_scheduler(name).schedule(problem)
            took = time.perf_counter() - t0
            bad = len(deliverability_violations(problem, s, limit=1000))
            print(
                f"{n:>8} {name:>10} {took:>7.2f} {'<10 s' if took < TARGET_S else 'MISSED':>7} {s.clusters:>8} "
                f"{s.objective_usd:>12.2f} {s.revenue_usd:>10.2f} {naive_revenue(problem):>11.2f} {bad:>10}"
            )
    print("naive: 30 % of fleet discharge power offered every hour at price 0, not checked for deliverability.")
    print("figures taken on a shared 2-core machine under load from other sessions.")


if __name__ == "__main__":
    main()
