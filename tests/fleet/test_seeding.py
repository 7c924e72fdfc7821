"""Demo fleet seed: sampled from the copied EV session data, idempotent, plugged-in cars offer flexibility."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command

from fleet import selectors
from fleet.models import PlugSession, Vehicle
from fleet.numerics.flexibility import fleet_flexibility
from fleet.seeding import load_distributions, sample_fleet
from tests.fleet.factories import T0, UserFactory


def test_the_copied_data_has_the_published_shapes() -> None:
    dist = load_distributions()
    assert len(dist.models) == 8
    assert all(col.size == 96 for col in dist.arrival_pct.values())
    assert all(col.size == 101 for col in dist.connection_h.values())
    assert {m.name for m in dist.models} >= {"Tesla Model 3", "Volkswagen ID.3"}


def test_sampling_is_reproducible_and_follows_the_data() -> None:
    first = sample_fleet(300, seed=1)
    assert first == sample_fleet(300, seed=1)
    # registrations: the Model 3 is the most registered model, so the most frequent draw
    counts: dict[str, int] = {}
    for v in first:
        counts[v.model.name] = counts.get(v.model.name, 0) + 1
    assert max(counts, key=lambda k: counts[k]) in {"Tesla Model 3", "Tesla Model Y"}
    # private chargers: most arrivals in the afternoon or evening
    evening = sum(1 for v in first if v.arrival_s >= 14 * 3600)
    assert evening > 150
    assert all(v.energy_wh <= v.model.capacity_wh * 0.6 for v in first)


@pytest.mark.django_db
def test_the_seed_command_is_idempotent_and_plugs_cars_into_the_given_stations() -> None:
    UserFactory.create(username="admin")
    call_command("fleet", "seed", "--vehicles", "30", "--stations", "demo-1", "demo-2", "demo-3")
    call_command("fleet", "seed", "--vehicles", "30", "--stations", "demo-1", "demo-2", "demo-3")
    assert Vehicle.objects.count() == 30
    open_sessions = PlugSession.objects.filter(ended_at__isnull=True)
    assert set(open_sessions.values_list("station_id", flat=True)) <= {"demo-1", "demo-2", "demo-3"}
    assert 1 <= open_sessions.count() <= 3


@pytest.mark.django_db
def test_seeded_plugged_in_cars_give_snapshots_and_flexibility() -> None:
    from fleet.seeding import demo_fleet_seed

    result = demo_fleet_seed(now=T0 + timedelta(hours=14), vehicles=40)
    snaps = selectors.plugged_in_snapshots(at=T0 + timedelta(hours=14))
    assert len(snaps) == result.plugged_in > 0
    flex = fleet_flexibility(snaps, start=T0 + timedelta(hours=14), intervals=4)
    assert flex.total.up_w[0] > 0
    assert list(flex.by_node) == ["depot-node"]
