"""ws/regulation: only a utility holding the signal permission may stream values; each frame is answered alone."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token

from markets.models import RegulationSignal
from tests.markets.regulation.data import regulation_product
from vpp.intake import auth
from vpp.intake.consumers import RegulationSignalConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_cached_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_tokens", {})


def _token(username: str, *, may_submit: bool) -> str:
    user = User.objects.create_user(username, password="a-long-test-password")
    if may_submit:
        user.user_permissions.add(Permission.objects.get(codename="submit_regulation_signal"))
    return Token.objects.create(user=user).key


async def _connect(key: str | None) -> tuple[WebsocketCommunicator, bool, Any]:
    headers = [(b"authorization", f"Token {key}".encode())] if key else []
    communicator = WebsocketCommunicator(RegulationSignalConsumer.as_asgi(), "/ws/regulation", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


@pytest.mark.parametrize(("who", "close_code"), [("nobody", 4401), ("viewer", 4403)])
async def test_it_refuses_a_socket_without_a_token_or_without_the_permission(who: str, close_code: int) -> None:
    # Given no token, or the token of a user who may not send signal values
    key = None if who == "nobody" else await sync_to_async(_token)(who, may_submit=False)

    # When the utility opens the socket, then the handshake is refused with the close code that says why
    _, connected, code = await _connect(key)
    assert (connected, code) == (False, close_code)


async def test_it_refuses_a_product_named_without_its_operator_and_stays_open() -> None:
    # Given the RegD product and an authorised utility
    await sync_to_async(regulation_product)()
    communicator, connected, _ = await _connect(await sync_to_async(_token)("utility", may_submit=True))
    assert connected

    # When it names the product by its bare code, then that frame alone is refused with the reason
    await communicator.send_json_to({"product": "reg-d", "value": 0.5, "at": "2026-12-01T10:00:00+00:00"})
    answer = await communicator.receive_json_from(timeout=10)
    assert answer["ok"] is False
    assert "operator:code" in answer["error"]

    # And the next, well-formed frame on the same socket is stored and answered
    await communicator.send_json_to(
        {"product": "pjm:reg-d", "portfolio": "ws-test", "value": -0.25, "at": "2026-12-01T10:00:02+00:00"}
    )
    answer = await communicator.receive_json_from(timeout=10)
    assert answer["ok"] is True, answer
    assert (answer["created"], answer["value"]) == (True, "-0.25000")
    assert await RegulationSignal.objects.filter(portfolio="ws-test").acount() == 1
    await communicator.disconnect()
