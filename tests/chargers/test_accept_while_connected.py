"""A Pending station an operator accepts while it is connected, when the TriggerMessage asking it to boot again
fails (the station refuses it, it times out, or the command line cannot reach the server): its open connection stops
refusing it once it re-reads the registration status, and its next BootNotification is Accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from asgiref.sync import sync_to_async

from chargers.models import BootStatus
from chargers.services.provisioning import station_accept
from tests.chargers.conftest import LiveServer, raw_station, start_server, stop_server
from tests.chargers.factories import StationFactory
from tests.chargers.payloads import COMMON

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
async def _close_db_threads() -> AsyncIterator[None]:
    """The ORM ran in sync_to_async's thread: close its connection, or PostgreSQL cannot drop the test database."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture(scope="module")
def rechecking_csms(django_db_setup: None, django_db_blocker: object) -> Iterator[LiveServer]:
    server = start_server({"OCPP_BOOT_RECHECK_S": "0"})  # re-read before every refusal: no waiting in the test
    yield server
    stop_server(server)


def _status(message_id: str) -> list:
    return [2, message_id, "StatusNotification", COMMON["StatusNotification"]]


async def test_a_station_accepted_while_connected_is_served_though_it_could_not_be_asked_to_boot(rechecking_csms):
    # Given a Pending station, connected and booted, whose own StatusNotification is refused
    station = await sync_to_async(StationFactory.create)(boot_status=BootStatus.PENDING)
    async with raw_station(rechecking_csms, station.station_id) as cs:
        assert (await cs.rpc([2, "b-1", "BootNotification", COMMON["BootNotification"]]))[2]["status"] == "Pending"
        assert (await cs.rpc(_status("s-1")))[:3] == [4, "s-1", "SecurityError"]
        # When an operator accepts it and no TriggerMessage reaches it (as when the trigger fails)
        result = await sync_to_async(station_accept)(
            station_id=station.station_id, actor_user_id=None, actor_label="ops", trigger=False
        )
        assert (result.previous, result.triggered) == ("Pending", False)
        # Then the same connection serves its StatusNotification, and its next boot is Accepted
        assert await cs.rpc(_status("s-2")) == [3, "s-2", {}]
        assert (await cs.rpc([2, "b-2", "BootNotification", COMMON["BootNotification"]]))[2]["status"] == "Accepted"
        assert await cs.rpc(_status("s-3")) == [3, "s-3", {}]


async def test_a_station_still_pending_stays_refused_after_the_re_read(rechecking_csms):
    # Given a Pending station, connected and booted, that nobody accepts
    station = await sync_to_async(StationFactory.create)(boot_status=BootStatus.PENDING)
    async with raw_station(rechecking_csms, station.station_id) as cs:
        assert (await cs.rpc([2, "b-1", "BootNotification", COMMON["BootNotification"]]))[2]["status"] == "Pending"
        # When it sends its own messages, each after a fresh read of its status / Then each is still refused
        for n in range(3):
            assert (await cs.rpc(_status(f"s-{n}")))[:3] == [4, f"s-{n}", "SecurityError"]
