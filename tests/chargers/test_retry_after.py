"""A handshake refused for too many failures (429) says when to come back: ``Retry-After`` (RFC 9110 10.2.3), the
whole seconds until the window that blocks the station id or the address ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from chargers import handshake
from chargers.limits import FailureCounter
from tests.chargers.conftest import LiveServer, basic_auth, start_server, stop_server
from tests.chargers.factories import STATION_PASSWORD, StationFactory

WINDOW_S = 120


@pytest.fixture(autouse=True)
async def _close_db_threads() -> AsyncIterator[None]:
    """The ORM ran in sync_to_async's thread: close its connection, or PostgreSQL cannot drop the test database."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture(scope="module")
def strict_csms(django_db_setup: None, django_db_blocker: object) -> Iterator[LiveServer]:
    server = start_server({"OCPP_AUTH_FAILURES_PER_STATION": "2", "OCPP_AUTH_FAILURE_WINDOW_S": str(WINDOW_S)})
    yield server
    stop_server(server)


async def _status_and_headers(server: LiveServer, station_id: str, password: str) -> tuple[int, dict[str, str]]:
    try:
        ws = await websockets.asyncio.client.connect(
            f"{server.ws_url}/{station_id}",
            subprotocols=[Subprotocol("ocpp2.1")],
            additional_headers=basic_auth(station_id, password),
            open_timeout=10,
        )
    except InvalidStatus as exc:
        return exc.response.status_code, {k.lower(): v for k, v in exc.response.headers.raw_items()}
    await ws.close()
    return 101, {}


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
async def test_a_locked_out_station_is_told_in_retry_after_when_to_come_back(strict_csms):
    # Given a station whose password was guessed wrong as often as the limit allows
    station = await sync_to_async(StationFactory.create)()
    for n in range(2):
        status, headers = await _status_and_headers(strict_csms, station.station_id, f"wrong-guess-{n:020d}")
        assert status == 401
        assert "retry-after" not in headers  # an ordinary refusal says nothing of retrying
    # When it connects again, with the right password, within the window
    status, headers = await _status_and_headers(strict_csms, station.station_id, STATION_PASSWORD)
    # Then the refusal is 429 with a Retry-After of whole seconds, at most the window
    assert status == 429
    assert headers["retry-after"].isdigit()
    assert 1 <= int(headers["retry-after"]) <= WINDOW_S


def test_retry_after_counts_down_to_the_end_of_the_latest_blocking_window(settings, monkeypatch):
    # Given a station id blocked at t=0 and its address blocked at t=30, in 60-s windows
    settings.OCPP_AUTH_FAILURE_WINDOW_S = 60.0
    settings.OCPP_AUTH_FAILURES_PER_STATION = 1
    settings.OCPP_AUTH_FAILURES_PER_ADDRESS = 1
    clock = [0.0]
    monkeypatch.setattr(handshake, "FAILURES", FailureCounter(clock=lambda: clock[0]))
    handshake.FAILURES.failed("station:cs-1", window_s=60.0)
    clock[0] = 30.0
    handshake.FAILURES.failed("address:192.0.2.7", window_s=60.0)
    # When it retries at t=44.5 from that address, from another, and at t=90.2 from that address
    clock[0] = 44.5
    both, station_only = (
        handshake.handshake_retry_after("cs-1", "192.0.2.7"),
        handshake.handshake_retry_after("cs-1", "192.0.2.8"),
    )
    clock[0] = 90.2
    later = handshake.handshake_retry_after("cs-1", "192.0.2.7")
    # Then it is told to wait for the later window, rounded up; for its own window only; and then not at all
    assert (both, station_only, later) == (46, 16, 0)
