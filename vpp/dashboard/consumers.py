"""Browser-facing live feed: the dashboard subscribes here and receives telemetry as it is committed."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

# The group the CSMS publishes committed telemetry to (meter values, status, connection changes).
from chargers.telemetry import TELEMETRY_GROUP


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """Forwards ``telemetry.update`` group messages to signed-in staff; refuses everyone else."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_staff:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(TELEMETRY_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(TELEMETRY_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Read-only feed: the browser has nothing to say beyond keep-alives.
        return None

    async def telemetry_update(self, event: dict[str, Any]) -> None:
        # The CSMS publishes {"type": "telemetry.update", "updates": [...]} once per committed batch.
        await self.send_json({"updates": event["updates"]})
