"""The intake's answer says whether the value reached the fleet, and if not, why: never "dispatched" with nothing
sent. The dispatchers here are real and load the fleet from the database (vpp.dispatch.selectors)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from asgiref.sync import SyncToAsync, sync_to_async

from markets.regulation.models import RegulationSignal, SignalSource
from tests.markets.regulation.data import client_for, regulation_product, user_with
from tests.vpp.stand_ins import award_now
from vpp.dispatch import dispatcher as dispatcher_module
from vpp.dispatch import services
from vpp.dispatch.dispatcher import dispatchers_running


@pytest.fixture
async def no_dispatchers(monkeypatch):
    """An empty registry for the test; every dispatcher it started is stopped after."""
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    monkeypatch.setattr(services, "_products", {})
    yield
    for running in dispatchers_running():
        await running.stop()


@pytest.mark.django_db(transaction=True)
async def test_it_says_a_value_was_not_dispatched_when_no_car_is_plugged_in(no_dispatchers):
    # Given RegD awarded to portfolio "empty" now, and no vehicle plugged in anywhere
    product = await sync_to_async(regulation_product)()
    await sync_to_async(award_now)(product, "empty")
    # When a value for it arrives (the WebSocket edge's path)
    intake = await services.regulation_signal_intake(
        product="pjm:reg-d", portfolio="empty", value="0.5", at=datetime.now(UTC), source=SignalSource.WEBSOCKET
    )
    # Then it is stored, but the answer says it was not dispatched, and why
    assert (intake.created, intake.dispatched) == (True, False)
    assert intake.why_not == "no plugged-in vehicle on a connected station: nothing to send setpoints to"
    assert await RegulationSignal.objects.filter(portfolio="empty").acount() == 1


@pytest.mark.django_db
def test_the_rest_answer_carries_the_reason_next_to_dispatched_false(monkeypatch):
    # Given RegD awarded to "empty" now, and a utility; the request is served outside an ASGI server (the test
    # client), where no dispatcher can run
    monkeypatch.setattr(SyncToAsync.threadlocal, "main_event_loop", None, raising=False)
    award_now(regulation_product(), "empty")
    utility = client_for(user_with("utility", "markets.submit_regulation_signal"))
    # When it posts a value over REST
    response = utility.post(
        "/api/regulation/signal",
        {"product": "pjm:reg-d", "portfolio": "empty", "at": datetime.now(UTC).isoformat(), "value": "0.5"},
        format="json",
    )
    # Then the value is stored (201) and the answer says it was not dispatched, and why
    assert response.status_code == 201
    body = response.json()
    assert body["dispatched"] is False
    assert body["not_dispatched"] == "not served by an ASGI server: no dispatcher in this process"


def test_a_thread_marked_with_a_stopped_loop_is_not_taken_for_an_asgi_server(monkeypatch):
    # Given a thread that an earlier sync_to_async call marked with its loop, since closed (asgiref never unmarks it)
    from vpp.dispatch.services import served_by_asgi

    stale = asyncio.new_event_loop()
    stale.close()
    monkeypatch.setattr(SyncToAsync.threadlocal, "main_event_loop", stale, raising=False)
    # When a sync view asks whether a dispatcher can run here
    # Then it cannot: the answer says "not served by an ASGI server" instead of waiting on a dead loop
    assert served_by_asgi() is False
