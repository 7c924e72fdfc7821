"""demo_seed: the demo admin, the demo stations and the demo fleet, whatever the generated secrets look like."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from chargers.models import Station
from chargers.passwords import password_verify
from fleet.models import StationOwnership


@pytest.mark.django_db
def test_it_seeds_stations_whose_generated_password_starts_with_a_dash(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a station password that argparse would read as an option (token_urlsafe draws one in 64 like this)
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("DEMO_STATION_PASSWORD", "-starts-with-a-dash-0123")

    # When the demo is seeded
    call_command("demo_seed", "--stations", "2", "--id-prefix", "dash")

    # Then both stations exist and accept that password
    for station in Station.objects.filter(station_id__in=["dash-1", "dash-2"]):
        assert password_verify("-starts-with-a-dash-0123", station.password_hash)
    assert Station.objects.filter(station_id__startswith="dash-").count() == 2
    # And the demo organisation owns them
    owners = StationOwnership.objects.filter(station__station_id__startswith="dash-")
    assert sorted(owners.values_list("organisation__slug", flat=True)) == ["demo", "demo"]
