"""Bid optimisers (pure, no Django): choose per product and market interval the capacity to offer and its price.

``schedule_bids(problem)`` runs the configured scheduler (HiGHS MILP by default) and falls back to the greedy one
if it fails or finds no solution in time. Add a scheduler by implementing ``Scheduler`` and registering it in
``SCHEDULERS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from markets.optimiser.greedy import GreedyScheduler
from markets.optimiser.highs import HighsScheduler
from markets.optimiser.naive import NaiveScheduler
from markets.optimiser.problem import (
    BidProblem,
    BidSchedule,
    ProblemError,
    ProductBid,
    ProductSpec,
    Scheduler,
    VehiclePlan,
)
from markets.optimiser.verify import deliverability_violations

logger = logging.getLogger(__name__)

SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "highs": HighsScheduler,
    "greedy": GreedyScheduler,
    "naive": NaiveScheduler,  # the benchmark's baseline: a fixed share of discharge power, checked car by car
}


def get_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ProblemError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}") from None


def schedule_bids(problem: BidProblem, *, scheduler: str = "highs", fallback: str = "greedy") -> BidSchedule:
    """Solve with ``scheduler``; on any solver failure use ``fallback`` and say so in ``notes``."""
    problem.validate()
    try:
        return get_scheduler(scheduler).schedule(problem)
    except ProblemError:
        raise
    except Exception as exc:  # a solver failure must not leave the market without bids
        logger.warning("scheduler %s failed (%s); falling back to %s", scheduler, exc, fallback)
        result = get_scheduler(fallback).schedule(problem)
        result.notes.append(f"{scheduler} failed ({exc}); {fallback} used")
        return result


__all__ = [
    "SCHEDULERS",
    "BidProblem",
    "BidSchedule",
    "ProblemError",
    "ProductBid",
    "ProductSpec",
    "Scheduler",
    "VehiclePlan",
    "deliverability_violations",
    "get_scheduler",
    "schedule_bids",
]
