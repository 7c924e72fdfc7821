"""The live demo's reserve events: the demo operator calls one on every portfolio holding reserve through the real
API (``POST /api/regulation/reserve`` on the running server, the demo grid's API key), all of its award, labelled
``demo-...``, and holds the portfolio's regulation signal at its value at the event start while it lasts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from fleet.models import DeparturePlan, WeeklyDeparture
from markets.models import Award
from markets.regulation.models import ReserveDeployment
from vpp.demo_market import demo_reserve_product
from vpp.management.commands import demo_market as demo_market_command
from vpp.management.commands.demo_market import (
    EVENT_EVERY_S,
    EVENT_MINUTES,
    Command,
    ReserveEvents,
    awards_ensure,
    portfolios_at,
)
from vpp.replay.harness import utility_token


def no_departure_within_the_day() -> None:
    """The demo's cars leave on a weekly schedule: within the coming hour at some times of day, when a car keeps its
    departure need and a fleet holds no reserve. These tests are about the awards and events, not departures."""
    DeparturePlan.objects.all().delete()
    WeeklyDeparture.objects.all().delete()


pytestmark = pytest.mark.django_db(transaction=True)


def test_the_demo_operator_calls_a_reserve_event_through_the_api_and_holds_the_signal_meanwhile(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, live_server: Any
) -> None:
    monkeypatch.setattr(demo_market_command, "close_old_connections", lambda: None)
    # Given the demo seeded and its grid operator's awards made: each fleet holds reserve
    settings.VAR_DIR = tmp_path
    call_command("demo_seed", "--stations", "4", "--id-prefix", "rsv", "--history-days", "0")
    no_departure_within_the_day()
    awarded = awards_ensure(now=timezone.now())
    reserve = [a for a in awarded if a.reserve]
    assert reserve
    at = max(a.start for a in reserve)
    holders = portfolios_at(awarded, at, reserve=True)
    assert holders
    # When the operator's hourly event falls due (the RegD value at that instant: 0.4)
    command = Command()
    command.http_base = live_server.url
    command.events = ReserveEvents(first_at=at.timestamp())
    asyncio.run(command._reserve_events(utility_token("demo-grid"), awarded, at, 0.4))
    # Then each holder got an event through the API: all of its reserve award, EVENT_MINUTES long, labelled demo
    events = list(ReserveDeployment.objects.order_by("portfolio"))
    assert [e.portfolio for e in events] == holders
    product = demo_reserve_product()
    for event in events:
        in_force = {"interval_start__lte": at, "interval_end__gt": at}
        held = Award.objects.get(product=product, portfolio=event.portfolio, **in_force)
        assert event.event_id.startswith(f"demo-{event.portfolio}-")
        assert (event.product_id, event.power_w) == (product.pk, held.awarded_w)
        assert (event.start, event.end) == (at, at + timedelta(minutes=EVENT_MINUTES))
        assert event.source == "utility_api"
    # And the regulation signal is held at 0.4 during the event only; the next event is due an hour later
    portfolio = holders[0]
    assert command.events.held_value(portfolio, at.timestamp() + 60) == 0.4
    assert command.events.held_value(portfolio, at.timestamp() + EVENT_MINUTES * 60) is None
    assert command.events.next_at == at.timestamp() + EVENT_EVERY_S
