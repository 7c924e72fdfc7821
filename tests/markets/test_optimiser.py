"""The optimiser never offers more than the fleet can deliver, and its bids respect size rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.numerics.snapshot import VehicleSnapshot
from markets.optimiser import (
    BidProblem,
    BidSchedule,
    deliverability_violations,
    get_scheduler,
    schedule_bids,
)
from markets.optimiser.synthetic import pjm_like_products, random_fleet

START = datetime(2026, 7, 1, tzinfo=UTC)


vehicle = st.builds(
    lambda i, cap, soc, floor, target, ch, dis, dep, eff: VehicleSnapshot(
        vehicle_id=i,
        capacity_wh=cap,
        soc_wh=int(cap * soc),
        floor_wh=int(cap * floor),
        max_charge_w=ch,
        max_discharge_w=dis,
        charge_efficiency=eff,
        discharge_efficiency=eff,
        departure=None if dep is None else START + timedelta(minutes=dep),
        target_wh=int(cap * target),
        node="depot" if i % 2 else "default",
    ),
    i=st.integers(1, 10**6),
    cap=st.sampled_from([40_000, 60_000, 77_000]),
    soc=st.floats(0.05, 1.0),
    floor=st.floats(0.1, 0.3),
    target=st.floats(0.3, 1.0),
    ch=st.sampled_from([3_700, 7_400, 11_000]),
    dis=st.sampled_from([0, 3_700, 11_000]),
    dep=st.one_of(st.none(), st.integers(5, 30 * 60)),
    eff=st.sampled_from([0.88, 0.92, 0.95]),
)


@pytest.mark.parametrize("scheduler", ["highs", "greedy"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=st.lists(vehicle, min_size=1, max_size=6, unique_by=lambda v: v.vehicle_id))
def test_it_never_offers_more_than_each_car_can_deliver(scheduler: str, fleet: list[VehicleSnapshot]) -> None:
    # given a small random fleet and 8 hours of three products with 10 kW increments
    problem = BidProblem(
        start=START,
        step_s=900,
        steps=32,
        vehicles=fleet,
        products=pjm_like_products(len(fleet), 32, min_w=10_000, increment_w=10_000),
    )
    # when the optimiser bids
    schedule = get_scheduler(scheduler).schedule(problem)
    # then simulating every car alone with its share keeps floors, departure needs and power limits
    assert deliverability_violations(problem, schedule) == []


@pytest.mark.parametrize("scheduler", ["highs", "greedy"])
def test_bids_respect_minimum_size_and_increment(scheduler: str) -> None:
    # given a fleet able to offer a few MW and a market with 0.3 MW minimum and 0.1 MW increments
    fleet = random_fleet(150, start=START, seed=4)
    problem = BidProblem(
        start=START,
        step_s=900,
        steps=96,
        vehicles=fleet,
        products=pjm_like_products(150, min_w=300_000, increment_w=100_000)[:2],
    )
    # when it bids
    schedule = get_scheduler(scheduler).schedule(problem)
    # then every bid is 0 or a multiple of the increment at or above the minimum, and something is offered
    assert schedule.bids
    for code in ("reg-d", "sync-reserve"):
        for q in schedule.quantity_w[code]:
            assert q == 0 or (q >= 300_000 and q % 100_000 == 0)
    assert deliverability_violations(problem, schedule) == []


def test_a_car_leaving_soon_with_an_empty_battery_offers_nothing() -> None:
    # given one car that must charge flat out until it leaves in one hour
    car = VehicleSnapshot(
        1, 60_000, 12_000, 12_000, 11_000, 11_000, departure=START + timedelta(hours=1), target_wh=22_000
    )
    problem = BidProblem(
        start=START, step_s=900, steps=8, vehicles=[car], products=pjm_like_products(1, 8, min_w=1000, increment_w=1000)
    )
    # when the optimiser bids
    schedule = schedule_bids(problem)
    # then no capacity is offered and the car charges
    assert all(q == 0 for qs in schedule.quantity_w.values() for q in qs)
    plan = schedule.plan(1)
    assert plan is not None
    assert plan.charge_w[:4].sum() > 0


def test_the_milp_earns_at_least_the_greedy_on_the_same_prices() -> None:
    fleet = random_fleet(300, start=START, seed=2)
    problem = BidProblem(start=START, step_s=900, steps=96, vehicles=fleet, products=pjm_like_products(300))
    milp = get_scheduler("highs").schedule(problem)
    greedy = get_scheduler("greedy").schedule(problem)
    assert milp.objective_usd >= greedy.objective_usd - 1e-6
    assert deliverability_violations(problem, milp) == []


def test_it_falls_back_to_greedy_when_the_solver_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from markets.optimiser import highs

    def broken(self: highs.HighsScheduler, problem: BidProblem) -> BidSchedule:
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(highs.HighsScheduler, "schedule", broken)
    problem = BidProblem(
        start=START, step_s=900, steps=8, vehicles=random_fleet(5, start=START), products=pjm_like_products(5, 8)
    )
    schedule = schedule_bids(problem)
    assert schedule.scheduler == "greedy"
    assert "solver crashed" in schedule.notes[0]


def test_identical_cars_aggregate_exactly_into_sums() -> None:
    # given ten identical cars with the same plug-in window
    from markets.optimiser.clusters import build_clusters

    cars = [
        VehicleSnapshot(
            i, 60_000, 36_000, 12_000, 11_000, 7_400, departure=START + timedelta(hours=6), target_wh=48_000
        )
        for i in range(1, 11)
    ]
    problem = BidProblem(start=START, step_s=900, steps=32, vehicles=cars, products=pjm_like_products(10, 32))
    # when they are clustered
    clusters, must = build_clusters(problem)
    # then they form one battery whose limits are the sums of theirs
    assert must == []
    assert len(clusters) == 1
    c = clusters[0]
    assert c.max_charge_w == pytest.approx(110_000)
    assert c.max_discharge_w == pytest.approx(74_000)
    assert c.capacity_wh == pytest.approx(600_000)
    assert c.lower_end[0] == pytest.approx(10 * (12_000 - 36_000))  # down to the floors
    assert c.upper == pytest.approx(10 * (60_000 - 36_000))  # up to full


def test_a_car_that_must_charge_flat_out_is_scheduled_alone_and_others_still_bid() -> None:
    # given a flexible car and one whose target takes flat-out charging until it leaves
    flexible = VehicleSnapshot(1, 60_000, 40_000, 12_000, 11_000, 11_000)
    stuck = VehicleSnapshot(
        2, 60_000, 12_000, 12_000, 11_000, 11_000, departure=START + timedelta(hours=2), target_wh=60_000
    )
    problem = BidProblem(
        start=START,
        step_s=900,
        steps=32,
        vehicles=[flexible, stuck],
        products=pjm_like_products(2, 32, min_w=1000, increment_w=1000),
    )
    # when the optimiser bids
    schedule = get_scheduler("highs").schedule(problem)
    # then the stuck car charges flat out, the flexible one carries the bids, and everything is deliverable
    plan = schedule.plan(2)
    assert plan is not None
    assert plan.charge_w[:8].min() == pytest.approx(11_000)
    assert sum(sum(qs) for qs in schedule.quantity_w.values()) > 0
    assert deliverability_violations(problem, schedule) == []


def test_the_naive_bid_is_checked_car_by_car_and_the_milp_beats_it() -> None:
    # given a fleet, prices and a flat energy price
    fleet = random_fleet(120, start=START, seed=5)
    problem = BidProblem(
        start=START, step_s=900, steps=96, vehicles=fleet, products=pjm_like_products(120), energy_price=[40.0] * 96
    )
    # when the naive share is bid as offered and with the cars that cannot honour it removed
    from markets.optimiser.naive import NaiveScheduler

    raw = NaiveScheduler(deliverable=False).schedule(problem)
    checked = NaiveScheduler(deliverable=True).schedule(problem)
    milp = get_scheduler("highs").schedule(problem)
    # then the checked naive bid is deliverable (the raw one is not), and the MILP nets more than either
    assert deliverability_violations(problem, raw) != []
    assert deliverability_violations(problem, checked) == []
    assert checked.capacity_revenue_usd <= raw.capacity_revenue_usd
    assert milp.objective_usd > max(raw.objective_usd, checked.objective_usd)
