"""Handshake authentication is batched: one query answers a whole reconnect wave, each station on its own merits."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chargers.handshake import authenticate_many
from tests.chargers.factories import STATION_PASSWORD, StationFactory

pytestmark = pytest.mark.django_db


def test_a_wave_of_handshakes_is_authenticated_with_one_query():
    # Given three provisioned stations
    a, b, c = StationFactory.create(), StationFactory.create(), StationFactory.create(boot_status="Pending")
    jobs = [
        (a.station_id, (a.station_id, STATION_PASSWORD)),  # right password
        (b.station_id, (b.station_id, "wrong-password-0000000")),  # wrong password
        ("cs-unknown", ("cs-unknown", STATION_PASSWORD)),  # not provisioned
        (c.station_id, (a.station_id, STATION_PASSWORD)),  # Basic user names another station
        (c.station_id, None),  # no credentials
        (c.station_id, (c.station_id, STATION_PASSWORD)),  # right password, Pending
    ]
    # When the batch is authenticated
    with CaptureQueriesContext(connection) as queries:
        outcomes = authenticate_many(jobs)
    # Then only the right credentials pass, with the station's boot status, in one query
    assert outcomes == [(a.pk, "Accepted"), None, None, None, None, (c.pk, "Pending")]
    assert len(queries) == 1


def test_a_batch_without_plausible_credentials_does_not_query():
    with CaptureQueriesContext(connection) as queries:
        assert authenticate_many([("cs-x", None), ("cs-y", ("cs-z", "pw"))]) == [None, None]
    assert len(queries) == 0
