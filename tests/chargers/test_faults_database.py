"""The database goes away under the group-commit writer: it answers errors, never acknowledges, and recovers.

On PostgreSQL a TCP proxy the test controls (tests.faults.PausableTcpProxy) sits between the writer's connection and
the server: paused (the server accepts TCP but answers nothing), resumed, cut. On SQLite the honest equivalent of a
database that does not answer is another connection holding the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import DatabaseError, connection

from chargers.apply import batch_apply
from chargers.jobs import CallOutcome, IncomingCall, StationRef
from chargers.models import MessageLog
from chargers.writer import GroupCommitWriter
from tests.chargers.factories import StationFactory
from tests.faults import PausableTcpProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def db_proxy() -> Iterator[PausableTcpProxy]:
    """New connections (the writer thread's) go through the proxy; the test thread's open connection does not."""
    if connection.vendor != "postgresql":
        pytest.skip("a TCP proxy stands between Django and PostgreSQL only; SQLite is a file")
    settings_dict = connection.settings_dict
    connection.ensure_connection()  # this thread's connection stays direct: pytest-django flushes through it
    with PausableTcpProxy(settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432)) as proxy:
        original = settings_dict["HOST"], settings_dict["PORT"]
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", proxy.port
        try:
            yield proxy
        finally:
            settings_dict["HOST"], settings_dict["PORT"] = original
            proxy.resume()
            if not connection.is_usable():
                connection.close()


def _status(station: StationRef, message_id: str) -> IncomingCall:
    """A StatusNotification (not a Heartbeat: a repeated heartbeat is always a new one, never answered from the
    log), the same payload on every retransmission, as a station resends it."""
    payload = {"timestamp": "2026-01-15T10:00:00Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
    return IncomingCall(station, message_id, "StatusNotification", payload, datetime.now(UTC))


def _stored(message_id: str) -> int:
    return MessageLog.objects.filter(message_id=message_id).count()


async def _retransmit_until_stored(
    writer: GroupCommitWriter[Any], job: IncomingCall, within: float = 20.0
) -> CallOutcome:
    """What a station does with a CALL answered InternalError: send it again, until it is acknowledged."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await asyncio.wait_for(writer.submit(job), within)
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_a_paused_then_cut_database_gets_errors_not_acknowledgements_and_the_writer_recovers(
    db_proxy: PausableTcpProxy,
) -> None:
    # Given a station and a writer whose connection goes through the proxy, stall timeout 1 s
    row = StationFactory.create()
    station = StationRef(row.pk, row.station_id, "2.1")
    acknowledged: list[str] = []

    async def scenario() -> None:
        writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_apply, stall_timeout=1.0)
        assert (await writer.submit(_status(station, "hb-1"))).error_code == ""
        acknowledged.append("hb-1")
        # When the database stops answering
        db_proxy.pause()
        # Then the waiting station is answered with an error within the stall timeout, not left hanging
        with pytest.raises(DatabaseError):
            await asyncio.wait_for(writer.submit(_status(station, "hb-2")), 10)
        # and while the batch is stuck, further jobs fail at once
        with pytest.raises(DatabaseError):
            await asyncio.wait_for(writer.submit(_status(station, "hb-3")), 5)
        # When it answers again, the station's retransmission is acknowledged without a restart
        db_proxy.resume()
        await _retransmit_until_stored(writer, _status(station, "hb-2"))
        acknowledged.append("hb-2")
        # When every connection is cut (the server vanished), the writer reconnects by itself
        db_proxy.cut()
        await _retransmit_until_stored(writer, _status(station, "hb-4"))
        acknowledged.append("hb-4")
        writer._executor.submit(lambda: connection.close()).result()  # its connection goes through the proxy

    asyncio.run(scenario())
    # Then everything acknowledged is stored, and the message that was stuck and retransmitted only once
    assert acknowledged == ["hb-1", "hb-2", "hb-4"]
    assert [_stored(m) for m in acknowledged] == [1, 1, 1]


def test_a_locked_sqlite_database_gets_errors_not_acknowledgements_and_the_writer_recovers() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL has the proxy test")
    # Given a station, a writer with a 1 s stall timeout, and another connection holding the database's write lock
    row = StationFactory.create()
    station = StationRef(row.pk, row.station_id, "2.1")
    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=5, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")

    async def scenario() -> None:
        writer: GroupCommitWriter[Any] = GroupCommitWriter(batch_apply, stall_timeout=1.0)
        # When a heartbeat must be stored
        # Then the station is answered with an error within the stall timeout, not acknowledged
        with pytest.raises(DatabaseError):
            await asyncio.wait_for(writer.submit(_status(station, "hb-1")), 10)
        # When the lock is released, the retransmission is acknowledged without a restart
        locker.execute("ROLLBACK")
        outcome = await _retransmit_until_stored(writer, _status(station, "hb-1"))
        assert outcome.error_code == ""
        writer._executor.submit(lambda: connection.close()).result()

    try:
        asyncio.run(scenario())
    finally:
        locker.close()
    assert _stored("hb-1") == 1
