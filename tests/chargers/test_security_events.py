"""Security events for operators, and the in-memory limits behind them (chargers.limits)."""

from __future__ import annotations

import pytest
from django.test import Client

from chargers.limits import FailureCounter, TokenBucket
from chargers.models import SecurityEvent, StationEvent, StationEventKind
from chargers.services.security_events import security_event_record
from tests.chargers.factories import StationFactory
from tests.fleet.factories import UserFactory


@pytest.mark.django_db
def test_an_event_about_a_known_station_is_its_station_event_and_an_unknown_id_a_security_event() -> None:
    station = StationFactory.create(station_id="known-1")
    security_event_record(kind=StationEventKind.AUTH_FAILED, station_ident="known-1", address="192.0.2.1", summary="x")
    security_event_record(kind=StationEventKind.AUTH_FAILED, station_ident="ghost-1", address="192.0.2.1", summary="y")
    assert StationEvent.objects.get(station=station).data == {"address": "192.0.2.1"}
    ghost = SecurityEvent.objects.get()
    assert (ghost.station_ident, ghost.address, ghost.summary) == ("ghost-1", "192.0.2.1", "y")


@pytest.mark.django_db
def test_operators_see_security_events_in_the_admin() -> None:
    # Given a security event about an unknown station id
    security_event_record(kind=StationEventKind.AUTH_FAILED, station_ident="ghost-2", address="192.0.2.7", summary="z")
    browser = Client()
    browser.force_login(UserFactory.create(is_staff=True, is_superuser=True))
    # When an operator opens the security events, then it is listed with its address
    response = browser.get("/admin/chargers/securityevent/")
    assert response.status_code == 200
    assert b"ghost-2" in response.content
    assert b"192.0.2.7" in response.content


def test_the_failure_counter_keeps_a_bounded_number_of_keys_and_forgets_after_its_window() -> None:
    clock = [0.0]
    counter = FailureCounter(max_keys=100, clock=lambda: clock[0])
    for n in range(10_000):
        counter.failed(f"address:{n}", window_s=60)
    assert len(counter) == 100
    assert counter.failed("station:a", window_s=60) == 1
    assert counter.failed("station:a", window_s=60) == 2
    clock[0] = 61.0
    assert counter.count("station:a", window_s=60) == 0
    assert counter.failed("station:a", window_s=60) == 1


def test_the_token_bucket_allows_a_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second at 2/s
    assert not bucket.take(0.5)
