"""The permission matrix's WebSocket rows, refused to anonymous clients.

A module of its own: these run with real transactions (the consumers close stale database connections around each
event), which cannot happen inside tests/test_permissions.py's module-wide ``world`` transaction (PostgreSQL refuses
the flush at teardown: "pending trigger events").
"""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from tests.test_permissions import MATRIX


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("key", [k for k, row in MATRIX.items() if row.ws])
async def test_websockets_refuse_anonymous(key: str) -> None:
    from vpp.asgi import application

    communicator = WebsocketCommunicator(application, MATRIX[key].url)
    connected, _ = await communicator.connect()
    assert not connected
    # The client goes away, as a browser does after a refused handshake: the consumer ends inside the test (its
    # channel-layer receive included), not in the event loop's teardown, which waited on Redis for 300 s in CI.
    await communicator.disconnect()
