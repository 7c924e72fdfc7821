from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from chargers.telemetry import TELEMETRY_GROUP
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


async def test_it_forwards_committed_telemetry_to_staff() -> None:
    # given a staff user on the dashboard socket
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
