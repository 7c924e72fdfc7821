"""Handshake authentication is batched: one query answers a whole reconnect wave, each station on its own merits."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chargers.handshake import UNAUTHENTICATED, Admitted, Refused, authenticate_many
from chargers.models import StationEvent, StationEventKind
from tests.chargers.factories import STATION_PASSWORD, StationFactory

pytestmark = pytest.mark.django_db

TLS_WITHOUT_CERT: dict[str, Any] = {
    "client_cert_chain": [],
    "client_cert_name": None,
    "client_cert_error": None,
    "tls_version": 772,
}


def test_a_wave_of_handshakes_is_authenticated_with_one_query():
    # Given three provisioned stations
    a, b, c = StationFactory.create(), StationFactory.create(), StationFactory.create(boot_status="Pending")
    jobs = [
        (a.station_id, (a.station_id, STATION_PASSWORD), None),  # right password
        (b.station_id, (b.station_id, "wrong-password-0000000"), None),  # wrong password
        ("cs-unknown", ("cs-unknown", STATION_PASSWORD), None),  # not provisioned
        (c.station_id, (a.station_id, STATION_PASSWORD), None),  # Basic user names another station
        (c.station_id, None, None),  # no credentials
        (c.station_id, (c.station_id, STATION_PASSWORD), None),  # right password, Pending
    ]
    # When the batch is authenticated
    with CaptureQueriesContext(connection) as queries:
        outcomes = authenticate_many(jobs)
    # Then only the right credentials pass, with the station's boot status, in one read
    assert outcomes == [Admitted(a.pk, "Accepted"), *[UNAUTHENTICATED] * 4, Admitted(c.pk, "Pending")]
    reads = [q for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1


def test_a_batch_without_plausible_credentials_does_not_query():
    with CaptureQueriesContext(connection) as queries:
        outcomes = authenticate_many([("cs-x", None, None), ("cs-y", ("cs-z", "pw"), None)])
    assert outcomes == [UNAUTHENTICATED, UNAUTHENTICATED]
    assert len(queries) == 0


def test_a_station_is_not_admitted_below_its_security_profile():
    # Given stations of profiles 1, 2 and 3, each with the right password
    one, two, three = (StationFactory.create(security_profile=n) for n in (1, 2, 3))
    creds = {s.station_id: (s.station_id, STATION_PASSWORD) for s in (one, two, three)}
    # When each connects with its password over ws:// and over TLS without a client certificate
    outcomes = authenticate_many(
        [(s.station_id, creds[s.station_id], tls) for s in (one, two, three) for tls in (None, TLS_WITHOUT_CERT)]
    )
    # Then profile 1 passes both ways, profile 2 only over TLS, profile 3 neither way (403: right password)
    statuses = [o.status if isinstance(o, Refused) else 101 for o in outcomes]
    assert statuses == [101, 101, 403, 101, 403, 403]


def test_each_refusal_of_a_known_station_is_stored_as_a_security_event():
    # Given a profile-2 station
    station = StationFactory.create(security_profile=2)
    # When it connects over ws:// with its password
    authenticate_many([(station.station_id, (station.station_id, STATION_PASSWORD), None)])
    # Then a SecurityEvent names the reason
    event = StationEvent.objects.get(station=station, kind=StationEventKind.SECURITY_EVENT)
    assert event.data == {"type": "HandshakeRefused", "status": 403, "reason": "profile 2 requires TLS (wss://)"}
