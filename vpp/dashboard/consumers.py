"""Browser-facing live feed: the dashboard subscribes here and receives telemetry as it is committed, for the
stations the signed-in user may see (an operator: all; a member: their organisations' own)."""

from __future__ import annotations

import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

# The group the CSMS publishes committed telemetry to (meter values, status, connection changes).
from chargers.telemetry import TELEMETRY_GROUP
from fleet.selectors import is_operator, stations_for

# A station given to (or taken from) the user's organisation shows up in (or leaves) an open feed within this time.
VISIBLE_REFRESH_S = 30.0


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """Forwards ``telemetry.update`` group messages, filtered to the user's stations; refuses anonymous users."""

    all_stations = False
    visible: frozenset[str] = frozenset()
    visible_at = 0.0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=4401)
            return
        self.all_stations = is_operator(user)
        await self._refresh_visible()
        await self.channel_layer.group_add(TELEMETRY_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(TELEMETRY_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Read-only feed: the browser has nothing to say beyond keep-alives.
        return None

    async def telemetry_update(self, event: dict[str, Any]) -> None:
        # The CSMS publishes {"type": "telemetry.update", "updates": [...]} once per committed batch.
        updates = event["updates"]
        if not self.all_stations:
            if time.monotonic() - self.visible_at > VISIBLE_REFRESH_S:
                await self._refresh_visible()
            updates = [u for u in updates if u.get("station_id") in self.visible]
        if updates:
            await self.send_json({"updates": updates})

    async def _refresh_visible(self) -> None:
        if not self.all_stations:
            self.visible = await database_sync_to_async(_station_ids_for)(self.scope["user"])
        self.visible_at = time.monotonic()


def _station_ids_for(user: Any) -> frozenset[str]:
    return frozenset(stations_for(user).values_list("station_id", flat=True))
