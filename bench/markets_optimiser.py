"""Bid optimiser benchmark: time and objective for 1k / 10k vehicles x 96 x 15 min x 3 products (target < 10 s),
and revenue against a naive bid on the same prices. Run: python bench/markets_optimiser.py [--sizes 1000,10000]

Naive (``markets.optimiser.naive``): every car charges flat out to its departure need and offers 30 % of its
discharge power, split over the two priced products, every whole hour it is plugged in. "naive-raw" is that bid
as offered (not checked: the violations column says how many car-steps break a floor / departure / power rule);
"naive" is the same bid with the cars that would break a rule removed, checked like the optimisers. Gross =
capacity revenue + avoided demand charge (vs the site without the fleet); net = gross - degradation - energy
bought at a flat ENERGY_PRICE $/MWh.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._progress import track
from markets.optimiser import BidProblem, deliverability_violations, get_scheduler
from markets.optimiser.naive import NaiveScheduler
from markets.optimiser.synthetic import pjm_like_products, random_fleet

START = datetime(2026, 7, 1, tzinfo=UTC)
TARGET_S = 10.0
ENERGY_PRICE = 40.0  # $/MWh, flat (the default of MARKETS_ENERGY_PRICE_USD_PER_MWH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    print(
        f"{'vehicles':>8} {'scheduler':>10} {'time s':>7} {'<10 s':>6} {'clusters':>8} {'capacity $':>10} "
        f"{'peak $':>9} {'gross $':>9} {'cost $':>8} {'net $':>9} {'net $/car':>9} {'violations':>10}"
    )
    for n in sizes:
        fleet = random_fleet(n, start=START, seed=11)
        problem = BidProblem(
            start=START,
            step_s=900,
            steps=96,
            vehicles=fleet,
            products=pjm_like_products(n),
            energy_price=[ENERGY_PRICE] * 96,
        )
        runs = [
            ("highs", get_scheduler("highs")),
            ("greedy", get_scheduler("greedy")),
            ("naive", NaiveScheduler(deliverable=True)),
            ("naive-raw", NaiveScheduler(deliverable=False)),
        ]
        for name, scheduler in track(runs, f"{n} vehicles"):
            t0 = time.perf_counter()
            s = scheduler.schedule(problem)
            took = time.perf_counter() - t0
            bad = len(deliverability_violations(problem, s, limit=100_000))
            ok = "yes" if took < TARGET_S else "NO" if name in ("highs", "greedy") else "-"
            print(
                f"{n:>8} {name:>10} {took:>7.2f} {ok:>6} {s.clusters:>8} {s.capacity_revenue_usd:>10.0f} "
                f"{s.peak_value_usd:>9.0f} {s.revenue_usd:>9.0f} {s.cost_usd:>8.0f} {s.objective_usd:>9.0f} "
                f"{s.objective_usd / n:>9.2f} {bad:>10}",
                flush=True,
            )
    print(f"energy bought at a flat {ENERGY_PRICE:.0f} $/MWh; figures taken on a shared, loaded 2-core machine.")


if __name__ == "__main__":
    main()
