"""``manage.py demo_market --server http://HOST:PORT``: the demo's grid operator, live (``runvpp`` starts it).

Every minute it makes sure each demo fleet holds a regulation award for the hour under way (taken late, from the
next 10-s row) and the next two (the fleet's offer, sized from its plugged-in cars, becomes an award through the
real bidding services: :mod:`vpp.demo_market`), with the hour's prices published for settlement. Every 2 s it
sends each awarded portfolio the RegD test signal, looped, through the utility intake ``ws/regulation`` (as a
utility would: an API key of scope ``signal``), so the live dispatcher regulates the simulated cars, the
settlement task scores and settles each quarter-hour, and the dashboard shows the signal, the setpoint and the
measured response as they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import websockets.asyncio.client
from channels.db import database_sync_to_async
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections
from django.utils import timezone

from fleet.selectors import plugged_in_snapshots
from markets.regulation.selectors import awards_overlapping
from vpp.demo_history import regd_signal
from vpp.demo_market import (
    HOUR,
    PRODUCT_REF,
    demo_portfolios,
    demo_product,
    late_start,
    offer_award,
    offer_capacity_w,
    prices_publish,
)
from vpp.replay.harness import utility_token

LOG = logging.getLogger(__name__)
AHEAD_HOURS = 3  # the hour under way and the next two
ENSURE_EVERY_S = 60.0
STEP_S = 2


@dataclass(frozen=True)
class Awarded:
    """A portfolio's award window: the signal is sent for instants within it only (the intake refuses others)."""

    portfolio: str
    start: datetime
    end: datetime


def awards_ensure(*, now: datetime) -> list[Awarded]:
    """Offer and award the coming hours where missing (the hour under way late, from the next 10-s row:
    :func:`vpp.demo_market.late_start`); returns the demo's awards in force from ``now`` on."""
    close_old_connections()
    product = demo_product()
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for portfolio, fleet in demo_portfolios():
        snapshots = plugged_in_snapshots(at=now, fleet_id=fleet.pk)
        capacity = offer_capacity_w(snapshots, at=now)
        for k in range(AHEAD_HOURS):
            start = hour + k * HOUR
            prices_publish(product=product, hour=start)
            begins = late_start(hour=start, now=now)
            if begins is not None:
                offer_award(
                    product=product,
                    portfolio=portfolio,
                    hour=start,
                    capacity_w=capacity,
                    simulated=False,
                    now=now,
                    start=begins,
                )
    ahead = awards_overlapping(start=now, end=hour + AHEAD_HOURS * HOUR)
    return [Awarded(a.portfolio, a.interval_start, a.interval_end) for a in ahead if a.product_id == product.pk]


def portfolios_at(awarded: list[Awarded], at: datetime) -> list[str]:
    """The portfolios whose award is in force at ``at``."""
    return sorted({a.portfolio for a in awarded if a.start <= at < a.end})


class Command(BaseCommand):
    help = "The demo's grid operator: regulation awards for the demo fleets and the RegD signal, looped, live."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--server", default="http://127.0.0.1:8000", help="the running server's base URL")
        parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        token = utility_token("demo-grid")
        ws_base = options["server"].rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        signal = regd_signal()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._run(ws_base, token, signal, options["duration"]))

    async def _run(self, ws_base: str, token: str, signal: Any, duration: float | None) -> None:
        deadline = time.time() + duration if duration else None
        while deadline is None or time.time() < deadline:
            try:
                await self._follow(ws_base, token, signal, deadline)
            except (OSError, websockets.exceptions.WebSocketException) as exc:
                LOG.warning("demo market: signal link lost (%s); reconnecting in 5 s", exc)
                await asyncio.sleep(5)

    async def _follow(self, ws_base: str, token: str, signal: Any, deadline: float | None) -> None:
        ensure = database_sync_to_async(awards_ensure)
        async with websockets.asyncio.client.connect(
            f"{ws_base}/ws/regulation", additional_headers={"Authorization": f"Api-Key {token}"}, open_timeout=10
        ) as ws:
            refused: set[str] = set()

            async def read() -> None:
                async for frame in ws:
                    answer = json.loads(frame)
                    error = str(answer.get("error") or "")
                    if not answer.get("ok") and error[:60] not in refused:  # each kind of refusal logged once
                        refused.add(error[:60])
                        LOG.warning("demo market: the intake refused a value: %s", error)

            reader = asyncio.ensure_future(read())
            try:
                awarded: list[Awarded] = []
                ensured_at = 0.0
                due = (time.time() // STEP_S + 1) * STEP_S
                while deadline is None or due < deadline:
                    await asyncio.sleep(max(due - time.time(), 0.0))
                    if due - ensured_at >= ENSURE_EVERY_S:
                        awarded = await ensure(now=timezone.now())
                        ensured_at = due
                    value = float(signal[int(due // STEP_S) % signal.size])
                    instant = datetime.fromtimestamp(due, UTC)
                    at = instant.isoformat()
                    for portfolio in portfolios_at(awarded, instant):
                        await ws.send(
                            json.dumps({"product": PRODUCT_REF, "portfolio": portfolio, "value": value, "at": at})
                        )
                    due += STEP_S
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
