"""demo_seed: the demo admin, the demo stations and the demo fleet, whatever the generated secrets look like."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from chargers.models import Station
from chargers.passwords import password_verify
from fleet.models import StationOwnership
from fleet.selectors import stations_for, vehicles_for


@pytest.mark.django_db
def test_it_seeds_stations_whose_generated_password_starts_with_a_dash(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a station password that argparse would read as an option (token_urlsafe draws one in 64 like this)
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("DEMO_STATION_PASSWORD", "-starts-with-a-dash-0123")

    # When the demo is seeded
    call_command("demo_seed", "--stations", "2", "--id-prefix", "dash", "--history-days", "0")

    # Then both stations exist and accept that password
    for station in Station.objects.filter(station_id__in=["dash-1", "dash-2"]):
        assert password_verify("-starts-with-a-dash-0123", station.password_hash)
    assert Station.objects.filter(station_id__startswith="dash-").count() == 2
    # And the two demo organisations own one each
    owners = StationOwnership.objects.filter(station__station_id__startswith="dash-").order_by("station__station_id")
    assert list(owners.values_list("organisation__slug", flat=True)) == ["demo", "harbour"]


@pytest.mark.django_db
def test_each_demo_manager_sees_only_their_organisations_stations_and_cars(tmp_path: Path, settings: Any) -> None:
    # Given the demo seeded with four stations
    settings.VAR_DIR = tmp_path
    call_command("demo_seed", "--stations", "4", "--id-prefix", "two", "--history-days", "0")
    # Then each manager's stations and vehicles are their organisation's only (the demo operator's include its
    # depot's main meter, vpp.demo_peak), and the operator sees all
    demo, harbour = (User.objects.get(username=name) for name in ("demo-manager", "harbour-manager"))
    assert sorted(stations_for(demo).values_list("station_id", flat=True)) == ["demo-depot-meter", "two-1", "two-2"]
    assert sorted(stations_for(harbour).values_list("station_id", flat=True)) == ["two-3", "two-4"]
    assert {v.fleet.organisation.slug for v in vehicles_for(harbour)} == {"harbour"}
    assert not (set(vehicles_for(demo)) & set(vehicles_for(harbour)))
    assert stations_for(User.objects.get(username="admin")).count() == 5
    assert not demo.is_staff
