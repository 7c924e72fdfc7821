from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client

from chargers.telemetry import TELEMETRY_GROUP
from fleet.models import Membership, Role, StationOwnership
from tests.chargers.factories import StationFactory
from tests.fleet.factories import OrganisationFactory, UserFactory
from vpp.asgi import application
from vpp.dashboard.consumers import DashboardConsumer

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_refuses_an_anonymous_browser() -> None:
    # given a socket with no signed-in user
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    communicator.scope["user"] = AnonymousUser()
    # when it connects
    connected, code = await communicator.connect()
    # then it is closed with the app's 4401 code
    assert not connected
    assert code == 4401


async def test_it_forwards_committed_telemetry_to_an_operator() -> None:
    # given an operator (Django staff) on the dashboard socket
    staff = User(username="ops", is_staff=True)
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    communicator.scope["user"] = staff
    connected, _ = await communicator.connect()
    assert connected
    # when the CSMS publishes an update to the telemetry group
    update = {"kind": "meter", "station_id": "cs-1", "values": {"Power.Active.Export": 7200}}
    await get_channel_layer().group_send(TELEMETRY_GROUP, {"type": "telemetry.update", "updates": [update]})
    # then the browser receives it unchanged
    assert await communicator.receive_json_from(timeout=2) == {"updates": [update]}
    await communicator.disconnect()


async def test_a_fleet_managers_feed_carries_only_their_organisations_stations() -> None:
    # Given two organisations with a station each, and a fleet manager of the first (not Django staff)
    manager = await sync_to_async(_manager_of_station)("mine-1", other_station="theirs-1")
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    communicator.scope["user"] = manager
    connected, _ = await communicator.connect()
    assert connected

    # When the CSMS publishes one batch with both stations' readings, then one with the other's only
    mine = {"kind": "meter", "station_id": "mine-1", "values": {"Power.Active.Export": 7200}}
    theirs = {"kind": "meter", "station_id": "theirs-1", "values": {"Power.Active.Export": 3600}}
    layer = get_channel_layer()
    await layer.group_send(TELEMETRY_GROUP, {"type": "telemetry.update", "updates": [mine, theirs]})
    await layer.group_send(TELEMETRY_GROUP, {"type": "telemetry.update", "updates": [theirs]})

    # Then the manager receives their own station's reading only, and nothing of the second batch
    assert await communicator.receive_json_from(timeout=2) == {"updates": [mine]}
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


def _manager_of_station(station_id: str, *, other_station: str) -> User:
    mine, theirs = OrganisationFactory.create(), OrganisationFactory.create()
    StationOwnership.objects.create(station=StationFactory.create(station_id=station_id), organisation=mine)
    StationOwnership.objects.create(station=StationFactory.create(station_id=other_station), organisation=theirs)
    manager = UserFactory.create(is_staff=False)
    Membership.objects.create(user=manager, organisation=mine, role=Role.FLEET_MANAGER)
    return manager


async def test_a_page_of_another_site_cannot_open_the_feed_with_a_visitors_cookie() -> None:
    # Given an operator's session cookie
    cookie = await sync_to_async(_operator_session_cookie)()

    async def handshake(origin: bytes) -> bool:
        headers = [(b"origin", origin), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
        communicator = WebsocketCommunicator(application, "/ws/dashboard", headers=headers)
        connected, _ = await communicator.connect()
        if connected:
            await communicator.disconnect()
        return connected

    # When a page of this site opens the feed, it connects; when another site's page does, it is refused
    assert await handshake(b"http://127.0.0.1")
    assert not await handshake(b"https://evil.example")


def _operator_session_cookie() -> bytes:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True))
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_a_subscribed_page_gets_the_overview_and_the_regulation_feed_without_reloading() -> None:
    # Given an operator's dashboard socket
    staff = User(username="ops-live", is_staff=True)
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    communicator.scope["user"] = staff
    connected, _ = await communicator.connect()
    assert connected
    # When the page subscribes (as it does on every (re)connection)
    await communicator.send_json_to({"subscribe": ["overview", "regulation"]})
    # Then it receives the whole overview at once, and the regulation series (none awarded here: empty)
    received = [await communicator.receive_json_from(timeout=10) for _ in range(2)]
    overview = next(m["overview"] for m in received if "overview" in m)
    assert {"stations", "vehicles", "revenue", "alerts", "fleet_power_w"} <= set(overview)
    assert next(m for m in received if "regulation" in m)["regulation"] == []
    await communicator.disconnect()


async def test_an_open_page_keeps_receiving_after_its_group_membership_would_have_expired(
    settings, monkeypatch
) -> None:
    # Given a channel layer whose group memberships expire after 1 s unless renewed (on Redis:
    # CHANNEL_LAYER_GROUP_EXPIRY_S, and a Redis restart forgets them at once), and a page renewing every 0.2 s
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"group_expiry": 1}}
    }
    monkeypatch.setattr("vpp.dashboard.consumers.DASHBOARD_REJOIN_S", 0.2)
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    communicator.scope["user"] = User(username="ops", is_staff=True)
    connected, _ = await communicator.connect()
    assert connected
    # When the page has been open longer than the expiry and the CSMS publishes an update
    await asyncio.sleep(1.6)
    update = {"kind": "meter", "station_id": "cs-1", "values": {"Power.Active.Export": 7200}}
    await get_channel_layer().group_send(TELEMETRY_GROUP, {"type": "telemetry.update", "updates": [update]})
    # Then the page still receives it
    assert await communicator.receive_json_from(timeout=2) == {"updates": [update]}
    await communicator.disconnect()
