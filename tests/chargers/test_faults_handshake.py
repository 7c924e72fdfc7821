"""A station connecting while the database does not answer: refused with 503 (its password cannot be checked, its
claim cannot be stored), never a crashed handshake; it connects as soon as the database answers, without a restart.

The database "does not answer" honestly: on PostgreSQL the live server reaches it through a TCP proxy the test
pauses; on SQLite another connection holds the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from ocpp.v21 import call as call21
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.chargers.conftest import LiveServer, basic_auth, start_server, station_client, stop_server
from tests.chargers.factories import StationFactory
from tests.faults import PausableTcpProxy

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

Fault = tuple[dict[str, str], Callable[[], None], Callable[[], None]]  # server env, hold, release


@contextlib.contextmanager
def _database_that_can_stop_answering() -> Iterator[Fault]:
    db = settings.DATABASES["default"]
    if connection.vendor == "postgresql":
        with PausableTcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
            url = f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}"
            yield {"DATABASE_URL": url}, proxy.pause, proxy.resume
        return
    locker = sqlite3.connect(db["NAME"], timeout=5, isolation_level=None)
    try:
        yield {}, lambda: _execute(locker, "BEGIN EXCLUSIVE"), lambda: _execute(locker, "ROLLBACK")
    finally:
        locker.close()


def _execute(db: sqlite3.Connection, sql: str) -> None:
    db.execute(sql)


async def test_a_station_is_refused_with_503_while_the_database_does_not_answer_and_connects_after(tmp_path):
    # Given a provisioned station and a live server whose database can stop answering (1-s stall limit)
    station = await sync_to_async(StationFactory.create)()
    with _database_that_can_stop_answering() as (env, hold, release):
        server = start_server(extra_env={**env, "DB_WRITER_STALL_S": "1", "VPP_VAR_DIR": str(tmp_path)})
        try:
            # When the station connects while the database does not answer
            hold()
            with pytest.raises(InvalidStatus) as refused:
                await websockets.asyncio.client.connect(
                    f"{server.ws_url}/{station.station_id}",
                    subprotocols=[Subprotocol("ocpp2.1")],
                    additional_headers=basic_auth(station.station_id),
                    open_timeout=30,
                )
            # Then it is refused with 503 (try again), not accepted on a claim that was never stored
            assert refused.value.response.status_code == 503
            # When the database answers again, the same server lets it in (as soon as the stuck read has returned:
            # a station retries its connection) and stores its boot
            release()
            async with _connected_when_answering(server, station.station_id) as client:
                boot = call21.BootNotification(charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp")
                assert (await client.cp.call(boot)).status == "Accepted"
        finally:
            release_quietly(release)
            stop_server(server)


@contextlib.asynccontextmanager
async def _connected_when_answering(server: LiveServer, station_id: str, within: float = 20.0) -> AsyncIterator[Any]:
    deadline = time.monotonic() + within
    while True:
        try:
            async with station_client(server, station_id) as client:
                yield client
                return
        except InvalidStatus as refused:
            if refused.response.status_code != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def release_quietly(release: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):  # already released
        release()
