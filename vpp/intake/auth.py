"""Who may send regulation signal values over the WebSocket edge (``ws/regulation``).

The key comes from the ``Authorization: Token <key>`` header or, for clients that cannot set headers on a WebSocket
handshake (browsers), the ``token`` query parameter; the lookup is :mod:`chargers.api_tokens`'. A token, once
verified, is trusted for :data:`TOKEN_TTL_S` seconds from memory so that the database stays off the signal's path
(a revoked token stops working within that time).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from chargers.api_tokens import token_key
from chargers.api_tokens import token_user as api_token_user

PERMISSION = "markets.submit_regulation_signal"
TOKEN_TTL_S = 60.0
_tokens: dict[str, tuple[float, int | None, bool]] = {}  # key -> (verified at, user id, may submit)


def scope_token(scope: dict[str, Any]) -> str:
    """The API token of a WebSocket handshake: the ``Authorization: Token`` header, else ``?token=``; "" if none."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            key = token_key(value)
            if key is not None:
                return key
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [""])[0]


async def token_user(key: str) -> tuple[int | None, bool]:
    """(user id or None, holds the signal permission) for an API token; cached for TOKEN_TTL_S."""
    cached = _tokens.get(key)
    if cached is not None and time.monotonic() - cached[0] < TOKEN_TTL_S:
        return cached[1], cached[2]
    user = await api_token_user(key)
    allowed = user is not None and await user.ahas_perm(PERMISSION)
    _tokens[key] = (time.monotonic(), user.pk if user else None, allowed)
    return (user.pk if user else None), allowed
