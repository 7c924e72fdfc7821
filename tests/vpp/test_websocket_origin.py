"""Session-authenticated WebSockets check Origin (issue 14): a page of another site cannot open them with a
visitor's cookie. Sockets that ignore cookies (API keys, station passwords and certificates) are not Origin-checked:
their callers are not browsers riding on someone's session, and any other client writes any Origin it likes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.security.websocket import OriginValidator
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.fleet.factories import UserFactory
from vpp.asgi import _websocket_patterns, application

# Browser-facing routes whose consumers authenticate by something other than the session cookie; each is proven
# below to ignore a valid cookie. Any other route of ``websocket_urlpatterns`` must be Origin-validated.
COOKIE_FREE = {"ws/regulation"}


@pytest.fixture(autouse=True)
async def _close_db_threads() -> AsyncIterator[None]:
    """The ORM ran in sync_to_async's thread: close its connection, or PostgreSQL cannot drop the test database."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


def _staff_session_cookie() -> bytes:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def test_every_route_signed_in_by_the_session_checks_the_origin():
    # Given every WebSocket route behind the session middleware
    routes = {str(p.pattern): p.callback for p in _websocket_patterns("websocket_urlpatterns")}
    # Then each is wrapped in an Origin validator, unless it is one that ignores cookies
    unchecked = {route for route, app in routes.items() if not isinstance(app, OriginValidator)}
    assert unchecked == COOKIE_FREE


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        (b"http://127.0.0.1", True),
        (b"https://evil.example", False),
        (b"http://127.0.0.1.evil.example", False),
        (None, False),  # a browser always sends Origin on a WebSocket; a missing one is not a page of this site
    ],
)
async def test_the_dashboard_feed_opens_only_for_pages_of_this_site_even_with_a_valid_cookie(origin, admitted):
    # Given an operator's valid session cookie
    cookie = await sync_to_async(_staff_session_cookie)()
    headers = [(b"host", b"127.0.0.1"), (b"cookie", cookie), *([(b"origin", origin)] if origin else [])]
    # When a page with that Origin opens the feed
    communicator = WebsocketCommunicator(application, "/ws/dashboard", headers=headers)
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    # Then only this site's own page is admitted
    assert connected is admitted


@pytest.mark.django_db(transaction=True)
async def test_the_key_authenticated_socket_ignores_a_session_cookie():
    # Given an operator's valid session cookie, sent from this site's own page, and no API key
    cookie = await sync_to_async(_staff_session_cookie)()
    headers = [(b"host", b"127.0.0.1"), (b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
    # When it opens ws/regulation
    communicator = WebsocketCommunicator(application, "/ws/regulation", headers=headers)
    connected, code = await communicator.connect()
    await communicator.disconnect()
    # Then it is refused as unauthenticated: the cookie opens nothing here, so no Origin check is needed
    assert (connected, code) == (False, 4401)
