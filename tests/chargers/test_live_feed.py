"""Committed telemetry reaches the dashboard's live feed, published from the server's own event loop."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from tests.chargers.conftest import station_socket
from tests.chargers.factories import StationFactory
from tests.chargers.test_consumer_inbox import METER_VALUES
from vpp.dashboard.consumers import DashboardConsumer

pytestmark = pytest.mark.django_db(transaction=True)


async def test_stored_meter_values_appear_on_the_dashboard_feed() -> None:
    # given a staff member watching the dashboard feed and a connected station
    dashboard = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard")
    dashboard.scope["user"] = User(username="ops", is_staff=True)
    assert (await dashboard.connect())[0]
    station = await sync_to_async(StationFactory.create)()
    socket = station_socket(station.station_id)
    assert (await socket.connect(timeout=5))[0]
    # when the station's meter values are stored and acknowledged
    await socket.send_to(text_data=json.dumps([2, "mv-1", "MeterValues", METER_VALUES]))
    assert json.loads(await socket.receive_from(timeout=5)) == [3, "mv-1", {}]
    # then the feed carries the reading (connection updates may come first)
    for _ in range(5):
        updates = (await dashboard.receive_json_from(timeout=5))["updates"]
        meters = [u for u in updates if u["kind"] == "meter" and u["station_id"] == station.station_id]
        if meters:
            break
    assert meters[0]["values"] == {"Energy.Active.Import.Register": 7000}
    await socket.disconnect()
    await dashboard.disconnect()
