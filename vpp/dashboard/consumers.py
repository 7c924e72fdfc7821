"""Browser-facing live feed: the dashboard subscribes here and receives telemetry as it is committed, for the
stations the signed-in user may see (an operator: all; a member: their organisations' own).

A page that sends ``{"subscribe": ["regulation", "overview"]}`` also gets, from then on, the regulation series of
its awarded portfolios every ``REGULATION_EVERY_S`` (new points only; the running score every ``SCORE_EVERY_S``) and
the whole overview (vehicles, revenue, alerts, station states) every ``OVERVIEW_EVERY_S``: the same selectors as
the page, scoped the same way. A page that reconnects after a dropped socket asks again and gets a fresh overview
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.serializers.json import DjangoJSONEncoder

# The group the CSMS publishes committed telemetry to (meter values, status, connection changes).
from chargers.telemetry import TELEMETRY_GROUP
from fleet.selectors import is_operator, stations_for
from vpp.dashboard.selectors import dashboard_overview
from vpp.dashboard.selectors_regulation import regulation_now

LOG = logging.getLogger(__name__)

# A station given to (or taken from) the user's organisation shows up in (or leaves) an open feed within this time.
VISIBLE_REFRESH_S = 30.0
REGULATION_EVERY_S = 2.0
SCORE_EVERY_S = 30.0
OVERVIEW_EVERY_S = 15.0
# The page joins the telemetry group again this often: a Redis restart forgets every group, and on Redis a member
# that stops renewing leaves after CHANNEL_LAYER_GROUP_EXPIRY_S (at least 30 s), so an open page would go quiet.
DASHBOARD_REJOIN_S = 10.0


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
        self._member = asyncio.ensure_future(self._stay_member())

    async def disconnect(self, code: int) -> None:
        for task in (getattr(self, "_pusher", None), getattr(self, "_member", None)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.channel_layer.group_discard(TELEMETRY_GROUP, self.channel_name)

    async def _stay_member(self) -> None:
        """Renew the telemetry-group membership until the socket closes (group_add is idempotent)."""
        while True:
            await asyncio.sleep(DASHBOARD_REJOIN_S)
            try:
                await self.channel_layer.group_add(TELEMETRY_GROUP, self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the page keeps its socket and joins again at the next period
                LOG.warning("dashboard feed: could not renew the telemetry membership", exc_info=True)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Read-only feed: the browser only says which periodic views it wants (anything else is a keep-alive).
        wanted = content.get("subscribe") if isinstance(content, dict) else None
        if not isinstance(wanted, list) or getattr(self, "_pusher", None) is not None:
            return
        topics = {str(t) for t in wanted} & {"regulation", "overview"}
        if topics:
            self._pusher = asyncio.ensure_future(self._push(topics))

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return json.dumps(content, cls=DjangoJSONEncoder)

    async def _push(self, topics: set[str]) -> None:
        """Send the periodic views until the socket closes; a failing read is logged and retried next period."""
        user = self.scope["user"]
        since: datetime | None = None
        score_at = overview_at = 0.0
        while True:
            now = time.monotonic()
            try:
                if "overview" in topics and now - overview_at >= OVERVIEW_EVERY_S:
                    overview_at = now
                    data = await database_sync_to_async(_overview)(user)
                    await self.send_json({"overview": data})
                if "regulation" in topics:
                    at = datetime.now(UTC)
                    with_score = now - score_at >= SCORE_EVERY_S
                    score_at = now if with_score else score_at
                    portfolios = await database_sync_to_async(_regulation)(user, at, since, with_score)
                    since = at - timedelta(seconds=REGULATION_LAG_S)
                    await self.send_json({"regulation": portfolios, "incremental": True})
            except asyncio.CancelledError:
                raise
            except Exception:  # a dropped database must not end the feed: the next period tries again
                LOG.warning("dashboard feed: a periodic read failed", exc_info=True)
            await asyncio.sleep(REGULATION_EVERY_S if "regulation" in topics else OVERVIEW_EVERY_S)

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


#: New points are read from this far back: meter values and dispatch records land a moment after their instant.
REGULATION_LAG_S = 12.0


def _overview(user: Any) -> dict[str, Any]:
    return asdict(dashboard_overview(user=user, at=datetime.now(UTC)))


def _regulation(user: Any, at: datetime, since: datetime | None, with_score: bool) -> list[dict[str, Any]]:
    return regulation_now(user=user, at=at, since=since, with_score=with_score)


def _station_ids_for(user: Any) -> frozenset[str]:
    return frozenset(stations_for(user).values_list("station_id", flat=True))
