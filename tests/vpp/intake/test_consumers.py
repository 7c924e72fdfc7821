"""ws/regulation: only a utility's API key (scope signal, user with the signal permission) may stream values, sent
in the header or the subprotocol, never the query string; each frame is answered alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User

from markets.models import RegulationSignal
from tests.faults import RedisProcess
from tests.fleet.factories import api_key_for
from tests.markets.regulation.data import regulation_product
from tests.vpp.stand_ins import award_now
from vpp.dispatch import dispatcher as dispatcher_module
from vpp.dispatch import services as dispatch_services
from vpp.dispatch.dispatcher import dispatchers_running
from vpp.intake import auth
from vpp.intake.consumers import RegulationSignalConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _no_cached_verdicts(monkeypatch: pytest.MonkeyPatch):
    auth.forget_all()
    # Product ids are cached per process; a transactional test's flush re-creates the products under new ids.
    monkeypatch.setattr(dispatch_services, "_products", {})
    # The dispatchers a test's frames start are its own, stopped after it (they run on its event loop).
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    yield
    for running in dispatchers_running():
        await running.stop()


def _now(**offset: float) -> str:
    return (datetime.now(UTC) + timedelta(**offset)).isoformat()


def _token(username: str, *, may_submit: bool, scopes: tuple[str, ...] = ("signal",), portfolio: str = "") -> str:
    user = User.objects.create_user(username, password="a-long-test-password")
    if may_submit:
        user.user_permissions.add(Permission.objects.get(codename="submit_regulation_signal"))
    return api_key_for(user, *scopes, portfolio=portfolio)


async def _connect(
    key: str | None, *, via: str = "header", path: str = "/ws/regulation"
) -> tuple[WebsocketCommunicator, bool, Any]:
    headers = [(b"authorization", f"Api-Key {key}".encode())] if key and via == "header" else []
    subprotocols = ["vpp.regulation.v1", f"apikey.{key}"] if key and via == "subprotocol" else None
    communicator = WebsocketCommunicator(
        RegulationSignalConsumer.as_asgi(), path, headers=headers, subprotocols=subprotocols
    )
    connected, code = await communicator.connect()
    if not connected:
        # The refused consumer still waits on its channel (on Redis, a blocking pop): end it here, not when the
        # test's event loop is torn down (where its cancellation can wait for the socket timeout).
        await communicator.disconnect()
    return communicator, connected, code


@pytest.mark.parametrize(
    ("who", "close_code"), [("nobody", 4401), ("viewer", 4403), ("read-only", 4403), ("bogus", 4401)]
)
async def test_it_refuses_a_socket_without_a_key_scope_or_permission(who: str, close_code: int) -> None:
    # Given no key, a key of a user who may not send, a read-only key of one who may, or an unknown key
    keys = {
        "nobody": None,
        "viewer": lambda: _token("viewer", may_submit=False),
        "read-only": lambda: _token("reader", may_submit=True, scopes=("read",)),
        "bogus": lambda: "abcdefgh.not-a-real-key",
    }
    make = keys[who]
    key = None if make is None else await sync_to_async(make)()

    # When the utility opens the socket, then the handshake is refused with the close code that says why
    _, connected, code = await _connect(key)
    assert (connected, code) == (False, close_code)


async def test_it_refuses_a_product_named_without_its_operator_and_stays_open() -> None:
    # Given RegD awarded to portfolio "ws-test" and an authorised utility
    await sync_to_async(award_now)(await sync_to_async(regulation_product)(), "ws-test")
    communicator, connected, _ = await _connect(await sync_to_async(_token)("utility", may_submit=True))
    assert connected

    # When it names the product by its bare code, then that frame alone is refused with the reason
    await communicator.send_json_to({"product": "reg-d", "value": 0.5, "at": _now()})
    answer = await communicator.receive_json_from(timeout=10)
    assert answer["ok"] is False
    assert "operator:code" in answer["error"]

    # And the next, well-formed frame on the same socket is stored and answered
    await communicator.send_json_to({"product": "pjm:reg-d", "portfolio": "ws-test", "value": -0.25, "at": _now()})
    answer = await communicator.receive_json_from(timeout=10)
    assert answer["ok"] is True, answer
    assert (answer["created"], answer["value"]) == (True, "-0.25000")
    assert await RegulationSignal.objects.filter(portfolio="ws-test").acount() == 1
    await communicator.disconnect()


async def test_a_key_in_the_query_string_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    # Given a valid key of an authorised utility
    key = await sync_to_async(_token)("utility", may_submit=True)

    # When it is sent as ?token=, then the handshake is refused (4401) and a log line says why
    _, connected, code = await _connect(None, path=f"/ws/regulation?token={key}")
    assert (connected, code) == (False, 4401)
    assert "query string" in caplog.text
    assert key not in caplog.text


async def test_a_key_in_the_subprotocol_is_accepted_and_the_server_picks_its_own_protocol() -> None:
    # Given an authorised utility's key offered as a subprotocol next to vpp.regulation.v1
    key = await sync_to_async(_token)("utility", may_submit=True)

    # When it connects, then it is accepted with vpp.regulation.v1 (the key is never echoed)
    communicator, connected, protocol = await _connect(key, via="subprotocol")
    assert (connected, protocol) == (True, "vpp.regulation.v1")
    await communicator.disconnect()


async def test_a_key_limited_to_a_portfolio_sends_for_that_portfolio_only() -> None:
    # Given a key limited to portfolio "east", and RegD awarded to "east" and "west"
    product = await sync_to_async(regulation_product)()
    for portfolio in ("east", "west"):
        await sync_to_async(award_now)(product, portfolio)
    key = await sync_to_async(_token)("utility", may_submit=True, portfolio="east")
    communicator, connected, _ = await _connect(key)
    assert connected

    # When it sends a value for "west", then that frame is refused and nothing stored
    await communicator.send_json_to({"product": "pjm:reg-d", "portfolio": "west", "value": 0.1, "at": _now()})
    answer = await communicator.receive_json_from(timeout=10)
    assert answer["ok"] is False
    assert "east" in answer["error"]
    assert not await RegulationSignal.objects.filter(portfolio="west").aexists()

    # And a value for "east" is stored
    await communicator.send_json_to({"product": "pjm:reg-d", "portfolio": "east", "value": 0.1, "at": _now()})
    assert (await communicator.receive_json_from(timeout=10))["ok"] is True
    await communicator.disconnect()


async def _utility_socket(portfolio: str | None = "ws-test") -> WebsocketCommunicator:
    """An authorised utility's open socket; RegD awarded to ``portfolio`` now (None: to no one)."""
    product = await sync_to_async(regulation_product)()
    if portfolio is not None:
        await sync_to_async(award_now)(product, portfolio)
    communicator, connected, _ = await _connect(await sync_to_async(_token)("utility", may_submit=True))
    assert connected
    return communicator


async def test_a_frame_stamped_beyond_the_clock_skew_window_is_refused_with_the_window() -> None:
    # Given an authorised utility streaming for an awarded portfolio
    communicator = await _utility_socket()
    # When a frame stamped an hour ahead arrives
    await communicator.send_json_to({"product": "pjm:reg-d", "portfolio": "ws-test", "value": 0.5, "at": _now(hours=1)})
    answer = await communicator.receive_json_from(timeout=10)
    # Then that frame is refused with the reason and the window; nothing is stored
    assert answer["ok"] is False
    assert "ahead of this server's clock" in answer["error"]
    assert answer["window"]["max_skew_s"] == 5.0
    assert not await RegulationSignal.objects.aexists()
    # And the next frame, stamped now, is stored and taken for dispatch (the future one froze nothing): with no car
    # plugged in, the answer says that nothing could be sent, not that the value came too late
    await communicator.send_json_to({"product": "pjm:reg-d", "portfolio": "ws-test", "value": 0.5, "at": _now()})
    answer = await communicator.receive_json_from(timeout=10)
    assert (answer["ok"], answer["created"], answer["dispatched"]) == (True, True, False)
    assert "no plugged-in vehicle" in answer["not_dispatched"]
    await communicator.disconnect()


async def test_a_frame_too_old_to_act_on_is_stored_but_not_dispatched() -> None:
    communicator = await _utility_socket()
    await communicator.send_json_to(
        {"product": "pjm:reg-d", "portfolio": "ws-test", "value": 0.5, "at": _now(minutes=-10)}
    )
    answer = await communicator.receive_json_from(timeout=10)
    assert (answer["ok"], answer["created"], answer["dispatched"]) == (True, True, False)
    assert "too old to act on" in answer["not_dispatched"]
    assert await RegulationSignal.objects.acount() == 1
    await communicator.disconnect()


async def test_a_frame_for_a_portfolio_nobody_awarded_is_refused_and_starts_no_dispatcher() -> None:
    # Given an authorised utility, and RegD awarded to no one
    communicator = await _utility_socket(portfolio=None)
    # When it sends a value for a portfolio string nobody awarded
    await communicator.send_json_to({"product": "pjm:reg-d", "portfolio": "made-up-42", "value": 0.5, "at": _now()})
    answer = await communicator.receive_json_from(timeout=10)
    # Then that frame is refused with the reason, nothing is stored, and no dispatcher was started for it
    assert answer["ok"] is False
    assert "'made-up-42' has no regulation capacity of pjm:reg-d awarded" in answer["error"]
    assert not await RegulationSignal.objects.aexists()
    assert [d.portfolio for d in dispatchers_running()] == []
    await communicator.disconnect()


@pytest.mark.skipif(not RedisProcess.available(), reason="needs redis-server on PATH")
async def test_a_redis_restart_does_not_close_a_utilitys_signal_connection(settings) -> None:
    # Given the Redis channel layer (a redis-server of the test's own) and a utility's open signal socket
    redis = RedisProcess()
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [{"address": redis.url}]}}
    }
    with redis:
        communicator, connected, _ = await _connect(await sync_to_async(_token)("utility", may_submit=True))
        assert connected
    # When Redis goes away (Channels' consumers wait on the layer too: its receive fails)
    await asyncio.sleep(1.0)
    # Then the socket is still open and answers the next frame
    await communicator.send_to(text_data="not json")
    assert await communicator.receive_json_from(timeout=10) == {"ok": False, "error": "frame is not JSON"}
    await communicator.disconnect()
