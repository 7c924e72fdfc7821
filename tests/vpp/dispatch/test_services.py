"""The dispatch entry points the intake edges call: which values are dispatched, in which order, by which dispatcher.

The dispatchers here are real, on stand-in stations (tests.vpp.stand_ins) and a state handed to them (no fleet in
the database): what a test checks is what reached a station.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from markets.regulation.models import SignalSource
from markets.regulation.services import SignalConflict, regulation_signal_record
from tests.markets.regulation.data import regulation_product
from tests.vpp.stand_ins import AnsweringStation, award_now, fleet_of
from vpp.dispatch import dispatcher as dispatcher_module
from vpp.dispatch import services
from vpp.dispatch.dispatcher import Dispatcher, DispatchState, Signal, dispatcher_for, dispatchers_running


@pytest.fixture
async def registry(monkeypatch, stations):
    """This process's dispatcher registry, empty, whose dispatchers follow two stand-in stations; all stopped after.

    Yields the stations' stand-ins by station id.
    """
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    monkeypatch.setattr(services, "_products", {})
    fleet, routes = fleet_of(2)
    agents = {route.station_id: AnsweringStation() for route in routes}
    for sid, agent in agents.items():
        stations(sid, agent)

    def create(product_id: int, portfolio: str) -> Dispatcher:
        def state(**_: object) -> DispatchState:
            now = time.time()
            return DispatchState(fleet, routes, 20_000, now + 3600, now)

        return Dispatcher(product_id=product_id, portfolio=portfolio, loader=state, recorder=None, telemetry=False)

    monkeypatch.setattr(services, "_dispatcher_create", create)
    yield agents
    for running in dispatchers_running():
        await running.stop()


def _signal(value: str, at: datetime, portfolio: str = "p") -> Signal:
    return Signal(1, portfolio, Decimal(value), at, SignalSource.WEBSOCKET, time.time())


async def test_a_value_stamped_in_the_future_does_not_freeze_dispatch(registry):
    # Given a value stamped a day ahead, handed to dispatch by a path that did not check its instant
    ahead = await services.regulation_dispatch_start(signal=_signal("0.5", datetime.now(UTC) + timedelta(days=1)))
    # When the real values follow
    now = await services.regulation_dispatch_start(signal=_signal("-0.5", datetime.now(UTC)))
    # Then the future one was not dispatched, and the real one is (it is not "older than the newest")
    assert isinstance(ahead, str)
    assert "future" in ahead
    assert isinstance(now, asyncio.Task)
    result = await now
    assert result.accepted == 2
    assert sum(len(agent.calls) for agent in registry.values()) == 2


def test_a_dispatcher_forgets_a_newest_instant_that_is_ahead_of_its_clock():
    # Given a dispatcher that took the value for T, and then this server's clock stepped back an hour
    dispatcher = _idle_dispatcher("p")
    t = datetime.now(UTC)
    assert dispatcher.take(_signal("0.1", t), now=t.timestamp()) == ""
    stepped = t - timedelta(hours=1)
    # When the next value comes, stamped by the stepped-back clock
    why_not = dispatcher.take(_signal("0.2", stepped + timedelta(seconds=2)), now=stepped.timestamp() + 2)
    # Then it is dispatched: T, now in the future, no longer makes it look late
    assert why_not == ""
    assert dispatcher.last_signal_at == stepped + timedelta(seconds=2)


@pytest.mark.django_db(transaction=True)
async def test_a_value_conflicting_with_a_stored_one_sends_no_setpoint(registry):
    # Given RegD awarded to portfolio "p", and the value at instant T already stored from another source
    product = await sync_to_async(regulation_product)()
    await sync_to_async(award_now)(product, "p")
    at = datetime.now(UTC).replace(microsecond=0)
    await sync_to_async(regulation_signal_record)(
        product=product, portfolio="p", at=at, value="0.25", source=SignalSource.UTILITY_API
    )
    # When a different value for T comes over the WebSocket edge
    with pytest.raises(SignalConflict):
        await services.regulation_signal_intake(
            product="pjm:reg-d", portfolio="p", value="-0.9", at=at, source=SignalSource.WEBSOCKET
        )
    await asyncio.sleep(0.3)  # a dispatch started before the store would have reached the stations by now
    # Then no setpoint went out
    assert [agent.calls for agent in registry.values()] == [[], []]


@pytest.mark.django_db(transaction=True)
async def test_the_same_instant_sent_twice_is_dispatched_once(registry):
    # Given RegD awarded to portfolio "p"
    product = await sync_to_async(regulation_product)()
    await sync_to_async(award_now)(product, "p")
    at = datetime.now(UTC)
    # When the same value comes twice (two sources, or a retransmission)
    first = await services.regulation_signal_intake(
        product="pjm:reg-d", portfolio="p", value="0.5", at=at, source=SignalSource.WEBSOCKET
    )
    again = await services.regulation_signal_intake(
        product="pjm:reg-d", portfolio="p", value="0.5", at=at, source=SignalSource.UTILITY_API
    )
    await asyncio.sleep(0.3)
    # Then it was stored and dispatched once; the second is acknowledged as already stored
    assert (first.created, first.dispatched, again.created, again.dispatched) == (True, True, False, False)
    assert "already stored" in again.why_not
    assert sum(len(agent.calls) for agent in registry.values()) == 2


# --- the per-process registry ---------------------------------------------------------------------------------------


def _idle_dispatcher(portfolio: str) -> Dispatcher:
    fleet, routes = fleet_of(1)
    return Dispatcher(
        product_id=1,
        portfolio=portfolio,
        loader=lambda **_: DispatchState(fleet, routes, 10_000, time.time() + 60, time.time()),
        recorder=None,
        telemetry=False,
        refresh_s=0.05,
        idle_s=0.3,
    )


async def _until(condition, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_a_dispatcher_without_signals_stops_and_leaves_the_registry(monkeypatch):
    # Given a dispatcher created for a portfolio that then receives no signal
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    dispatcher = dispatcher_for(product_id=1, portfolio="once", factory=lambda: _idle_dispatcher("once"))
    try:
        # When its idle time passes, then it stops and is no longer this process's dispatcher for the portfolio
        assert await _until(lambda: dispatcher.stopped and dispatcher not in dispatchers_running())
        # And the next signal for the portfolio gets a fresh one
        again = dispatcher_for(product_id=1, portfolio="once", factory=lambda: _idle_dispatcher("once"))
        assert again is not dispatcher
        await again.stop()
    finally:
        await dispatcher.stop()


async def test_dispatchers_are_bounded_per_process_the_least_recently_used_going_first(monkeypatch, settings):
    # Given room for two dispatchers, and two in use, "a" used last
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    settings.DISPATCHERS_MAX = 2
    made = {name: dispatcher_for(product_id=1, portfolio=name, factory=functools.partial(_idle_dispatcher, name))
            for name in ("a", "b")}  # fmt: skip
    dispatcher_for(product_id=1, portfolio="a", factory=lambda: _idle_dispatcher("a"))
    # When a third portfolio needs one
    made["c"] = dispatcher_for(product_id=1, portfolio="c", factory=lambda: _idle_dispatcher("c"))
    try:
        # Then "b" (the least recently used) was stopped to make room, and two run
        assert sorted(d.portfolio for d in dispatchers_running()) == ["a", "c"]
        assert await _until(lambda: made["b"].stopped)
    finally:
        for dispatcher in made.values():
            await dispatcher.stop()
