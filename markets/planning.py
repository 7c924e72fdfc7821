"""From the database to a ``BidProblem`` and back: which products, prices, site loads and vehicles a proposal uses.

Every active product of every active operator is co-optimised (the same cars serve them all); the problem's step is
the shortest market interval (15 min with the depot), the horizon the proposal's delivery day. When the proposal
runs before the day starts, the steps from now to the start are planned too (the fleet charges along its baseline
then) but carry no bids. Vehicles are the portfolio's plugged-in cars as the fleet app knows them now.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings

from markets.models import BidProposal, MarketOperator, Product
from markets.optimiser import BidProblem, BidSchedule, ProductSpec, schedule_bids
from markets.optimiser.wear import expected_wear
from markets.peak.selectors import tariff_peak_inputs
from markets.selectors import latest_prices, latest_site_load, portfolio_snapshots


def build_problem(*, proposal: BidProposal, now: datetime) -> tuple[BidProblem, dict[str, Any]]:
    products = list(
        Product.objects.filter(active=True, operator__active=True).select_related("operator", "site").order_by("id")
    )
    step_min = math.gcd(*[p.operator.interval_minutes for p in products]) if products else 60
    step = timedelta(minutes=step_min)
    start = proposal.horizon_start
    first = 0
    if now < start:
        # Whole intervals of the longest market so every product's intervals line up with the delivery day.
        block = math.lcm(*[p.operator.interval_minutes // step_min for p in products]) if products else 1
        pre = math.ceil((start - now) / (step * block)) * block
        first, start = pre, start - pre * step
    steps = first + int((proposal.horizon_end - proposal.horizon_start) / step)
    specs = [_spec(p, start=start, step=step, steps=steps, first=first, now=now) for p in products]
    vehicles = portfolio_snapshots(portfolio=proposal.portfolio, at=now)
    problem = BidProblem(
        start=start,
        step_s=int(step.total_seconds()),
        steps=steps,
        vehicles=vehicles,
        products=specs,
        first_biddable_step=first,
        energy_price=[float(settings.MARKETS_ENERGY_PRICE_USD_PER_MWH)] * steps,
        # Each pack's own rate: the cycle-ageing cost (the function settlement charges) of a shallow cycle at its
        # SoC and temperature now, under its own pack cost and cycle life (VehicleSnapshot.degradation_cost_per_kwh).
        degradation_usd_per_wh={v.vehicle_id: v.degradation_cost_per_kwh / 1000.0 for v in vehicles},
    )
    context: dict[str, Any] = {
        "products": {p.code: p for p in products},
        "inputs": {
            "start": start.isoformat(),
            "step_s": problem.step_s,
            "steps": steps,
            "first_biddable_step": first,
            "prices": {s.code: list(s.prices) for s in specs},
            "market_interval_steps": {s.code: s.market_interval_steps for s in specs},
            "vehicles": len(vehicles),
            "known_at": now.isoformat(),
        },
        "explanation": lambda schedule: explain(problem, schedule),
    }
    return problem, context


def _spec(product: Product, *, start: datetime, step: timedelta, steps: int, first: int, now: datetime) -> ProductSpec:
    operator: MarketOperator = product.operator
    per = int(timedelta(minutes=operator.interval_minutes) / step)
    # Market intervals are counted from the problem start; a product whose intervals don't line up is not biddable.
    n = steps // per
    known = latest_prices(product=product, start=start, end=start + n * per * step, known_at=now)
    prices: list[float | None] = [
        float(known[start + m * per * step]) if m * per >= first and (start + m * per * step) in known else None
        for m in range(n)
    ]
    common: dict[str, Any] = {
        "code": product.code,
        "direction": product.direction,
        "market_interval_steps": per,
        "sustain_h": product.sustain_minutes / 60.0,
        "up_activation": float(product.expected_up_activation),
        "down_activation": float(product.expected_down_activation),
        "min_w": operator.min_bid_w,
        "increment_w": operator.bid_increment_w,
    }
    if product.kind == Product.Kind.PEAK_SHAVING and product.site is not None:
        site = product.site
        # The site's demand-charge tariff and load forecast where it has them (markets.peak); else its configured
        # threshold and charge, the load assumed at the threshold where none is known.
        tariff = tariff_peak_inputs(site=site, start=start, step=step, steps=steps, now=now)
        if tariff is not None:
            return ProductSpec(
                prices=[None] * n,
                node=site.node,
                site_load_w=tariff.site_load_w,
                site_threshold_w=float(tariff.threshold_w),
                demand_charge_usd_per_w=float(tariff.price_per_w),
                **common,
            )
        loads = latest_site_load(site=site, start=start, end=start + steps * step, known_at=now)
        return ProductSpec(
            prices=[None] * n,
            node=site.node,
            site_load_w=[float(loads.get(start + t * step, site.threshold_w)) for t in range(steps)],
            site_threshold_w=float(site.threshold_w),
            demand_charge_usd_per_w=float(site.demand_charge / Decimal(1000)),
            **common,
        )
    return ProductSpec(prices=prices, **common)


def schedule_for(problem: BidProblem, *, scheduler: str = "highs") -> BidSchedule:
    schedule = schedule_bids(problem, scheduler=scheduler)
    # The bids' expected pack wear, by the function settlement will charge the delivery with.
    schedule.expected_wear_usd = expected_wear(problem, schedule)
    return schedule


def explain(problem: BidProblem, schedule: BidSchedule) -> str:
    lines = [
        f"{schedule.scheduler} ({schedule.status}) in {schedule.solve_s:.2f} s: {len(problem.vehicles)} vehicles in "
        f"{schedule.clusters} clusters over {problem.steps} x {problem.step_s // 60} min.",
        f"Expected capacity revenue and avoided demand charge {schedule.revenue_usd:.2f}, degradation and energy "
        f"cost {schedule.cost_usd:.2f}, net {schedule.objective_usd:.2f}.",
        f"Expected pack wear of the plan, car by car on its own battery (rainflow on the planned SoC, as settlement "
        f"charges it): {schedule.expected_wear_usd:.2f}.",
        "Offers are capped so every car keeps its floor and departure need even after a full activation; offer "
        "prices are the marginal cost of the capacity (opportunity cost of the other products included).",
    ]
    lines += schedule.notes
    return "\n".join(lines)
