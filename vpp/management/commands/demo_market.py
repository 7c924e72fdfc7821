"""``manage.py demo_market --server http://HOST:PORT``: the demo's grid operator, live (``runvpp`` starts it).

Every minute it makes sure each demo fleet holds a regulation award for the hour under way (taken late, from the
next 10-s row) and the next two (the fleet's offer, sized from its plugged-in cars, becomes an award through the
real bidding services: :mod:`vpp.demo_market`), with the hour's prices published for settlement. Every 2 s it
sends each awarded portfolio the RegD test signal, looped, through the utility intake ``ws/regulation`` (as a
utility would: an API key of scope ``signal``), so the live dispatcher regulates the simulated cars, the
settlement task scores and settles each quarter-hour, and the dashboard shows the signal, the setpoint and the
measured response as they happen.

Synchronized reserve: each of those hours the fleet also holds a reserve award (offered first; the regulation offer
is sized on what is left), and the operator calls a reserve event on every portfolio holding reserve
:data:`EVENT_FIRST_S` after start and then every :data:`EVENT_EVERY_S`, through the real API
(``POST /api/regulation/reserve``, event ids ``demo-...``), :data:`EVENT_MINUTES` long: dispatched live, measured
2 minutes after its end and settled with its award's quarter-hour by the settlement task. During an event the
portfolio's regulation signal is held at its value at the event start (:mod:`vpp.demo_market` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    demo_reserve_product,
    late_start,
    offer_award,
    offer_capacity_w,
    prices_publish,
    reserve_offer_w,
    reserve_price,
)
from vpp.replay.harness import utility_token

LOG = logging.getLogger(__name__)
AHEAD_HOURS = 3  # the hour under way and the next two
ENSURE_EVERY_S = 60.0
STEP_S = 2
EVENT_FIRST_S = 180.0  # the first reserve event, this long after start (the cars have connected by then)
EVENT_EVERY_S = 3600.0  # then one an hour
EVENT_MINUTES = 12  # measured at 10 minutes and sustained to the end


@dataclass(frozen=True)
class Awarded:
    """A portfolio's award window: the signal is sent for instants within it only (the intake refuses others)."""

    portfolio: str
    start: datetime
    end: datetime
    reserve: bool = False  # a synchronized reserve award (else regulation)


def awards_ensure(*, now: datetime) -> list[Awarded]:
    """Offer and award the coming hours where missing (the hour under way late, from the next 10-s row:
    :func:`vpp.demo_market.late_start`); returns the demo's awards in force from ``now`` on."""
    close_old_connections()
    product, reserve = demo_product(), demo_reserve_product()
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for portfolio, fleet in demo_portfolios():
        snapshots = plugged_in_snapshots(at=now, fleet_id=fleet.pk)
        reserve_w = reserve_offer_w(snapshots, at=now)
        capacity = offer_capacity_w(snapshots, at=now, reserve_w=reserve_w)
        for k in range(AHEAD_HOURS):
            start = hour + k * HOUR
            prices_publish(product=product, hour=start)
            begins = late_start(hour=start, now=now)
            if begins is None:
                continue
            # Reserve first: the regulation offer is sized on what the cars keep once the reserve is held
            offer_award(
                product=reserve, portfolio=portfolio, hour=start, capacity_w=reserve_w, simulated=False, now=now,
                start=begins, clearing=reserve_price(start),
            )  # fmt: skip
            offer_award(
                product=product, portfolio=portfolio, hour=start, capacity_w=capacity, simulated=False, now=now,
                start=begins,
            )  # fmt: skip
    ahead = awards_overlapping(start=now, end=hour + AHEAD_HOURS * HOUR)
    kinds = {product.pk: False, reserve.pk: True}
    return [
        Awarded(a.portfolio, a.interval_start, a.interval_end, kinds[a.product_id])
        for a in ahead
        if a.product_id in kinds and a.awarded_w > 0
    ]


def portfolios_at(awarded: list[Awarded], at: datetime, *, reserve: bool = False) -> list[str]:
    """The portfolios whose regulation (``reserve``: synchronized reserve) award is in force at ``at``."""
    return sorted({a.portfolio for a in awarded if a.reserve == reserve and a.start <= at < a.end})


def reserve_event_send(*, http_base: str, token: str, portfolio: str, at: datetime) -> dict[str, Any]:
    """Call a demo reserve event on ``portfolio`` from ``at`` through the real API (all of its award, as PJM
    deploys every cleared MW); returns the API's answer. Raises OSError (urllib's errors) when the server fails."""
    body = {
        "portfolio": portfolio,
        "event_id": f"demo-{portfolio}-{at:%Y%m%dT%H%M%S}",
        "start": at.isoformat(),
        "end": (at + timedelta(minutes=EVENT_MINUTES)).isoformat(),
    }
    request = urllib.request.Request(  # noqa: S310 - http(s) of the demo's own server (--server)
        f"{http_base}/api/regulation/reserve",
        json.dumps(body).encode(),
        {"Authorization": f"Api-Key {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the demo's own server
        return dict(json.loads(answer.read()))


class Command(BaseCommand):
    help = "The demo's grid operator: regulation awards for the demo fleets and the RegD signal, looped, live."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--server", default="http://127.0.0.1:8000", help="the running server's base URL")
        parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        token = utility_token("demo-grid")
        self.http_base = options["server"].rstrip("/")
        ws_base = self.http_base.replace("http://", "ws://").replace("https://", "wss://")
        signal = regd_signal()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._run(ws_base, token, signal, options["duration"]))

    async def _run(self, ws_base: str, token: str, signal: Any, duration: float | None) -> None:
        deadline = time.time() + duration if duration else None
        self.events = ReserveEvents(first_at=time.time() + EVENT_FIRST_S)
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
                    if due >= self.events.next_at:
                        await self._reserve_events(token, awarded, instant, value)
                    for portfolio in portfolios_at(awarded, instant):
                        held = self.events.held_value(portfolio, due)
                        sent = value if held is None else held
                        await ws.send(
                            json.dumps({"product": PRODUCT_REF, "portfolio": portfolio, "value": sent, "at": at})
                        )
                    due += STEP_S
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    async def _reserve_events(self, token: str, awarded: list[Awarded], instant: datetime, value: float) -> None:
        """Call this hour's demo reserve event on every portfolio holding reserve now (logged, never raises)."""
        self.events.next_at = instant.timestamp() + EVENT_EVERY_S
        for portfolio in portfolios_at(awarded, instant, reserve=True):
            try:
                answer = await asyncio.to_thread(
                    reserve_event_send, http_base=self.http_base, token=token, portfolio=portfolio, at=instant
                )
            except (OSError, ValueError) as exc:  # urllib.error.URLError / HTTPError are OSErrors
                LOG.warning("demo market: reserve event on %s not called: %s", portfolio, exc)
                continue
            self.events.called(portfolio, instant.timestamp(), value)
            LOG.warning(
                "demo market: reserve event %s on %s: %s W for %d min (dispatched: %s)",
                answer.get("event_id"), portfolio, answer.get("power_w"), EVENT_MINUTES, answer.get("dispatched"),
            )  # fmt: skip


@dataclass
class ReserveEvents:
    """The demo operator's reserve events: when the next is due, and each portfolio's event window and the
    regulation value held during it."""

    first_at: float
    next_at: float = 0.0
    windows: dict[str, tuple[float, float, float]] | None = None  # portfolio -> (start, end, held signal value)

    def __post_init__(self) -> None:
        self.next_at = self.first_at
        self.windows = {}

    def called(self, portfolio: str, start: float, value: float) -> None:
        assert self.windows is not None
        self.windows[portfolio] = (start, start + EVENT_MINUTES * 60, value)

    def held_value(self, portfolio: str, at: float) -> float | None:
        """The regulation value to send ``portfolio`` at ``at`` during its event (held at the start), else None."""
        window = (self.windows or {}).get(portfolio)
        if window is None or not window[0] <= at < window[1]:
            return None
        return window[2]
