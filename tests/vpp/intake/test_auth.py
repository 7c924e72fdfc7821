"""Token authentication of the regulation WebSocket (vpp.intake.auth on chargers.api_tokens)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from chargers.api_tokens import token_key
from vpp.intake import auth


def test_the_token_comes_from_the_authorization_header_else_the_query_string():
    header = {"headers": [(b"authorization", b"Token abc "), (b"host", b"x")], "query_string": b"token=q"}
    assert auth.scope_token(header) == "abc"
    assert auth.scope_token({"headers": [(b"authorization", b"Basic eDp5")], "query_string": b"token=q"}) == "q"
    assert auth.scope_token({"headers": []}) == ""
    assert (token_key("Token k"), token_key(b"Token "), token_key("Bearer k"), token_key(None)) == ("k", "", None, None)


@pytest.mark.django_db(transaction=True)
async def test_a_token_names_its_active_user_and_whether_it_may_send_signal_values(monkeypatch):
    monkeypatch.setattr(auth, "_tokens", {})
    user = await sync_to_async(User.objects.create_user)("viewer", password="a-long-test-password")
    key = (await sync_to_async(Token.objects.create)(user=user)).key
    assert await auth.token_user(key) == (user.pk, False)
    assert await auth.token_user("no-such-key") == (None, False)
