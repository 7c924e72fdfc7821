"""API token authentication (``Authorization: Token <key>``, DRF's tokens) for the edges DRF does not serve.

DRF's ``TokenAuthentication`` covers the REST views; the hand-written async edges (``chargers.api``'s station call,
the regulation WebSocket in ``vpp.intake``) read the same header through these two functions, so the scheme is
parsed and the key looked up in one place. Lowest layer that needs it: the CSMS (``chargers``).
"""

from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

SCHEME = "Token "


def token_key(header: str | bytes | None) -> str | None:
    """The key of an ``Authorization: Token <key>`` header value; None when the header is absent or another scheme.

    An empty key (``"Token "``) is returned as ``""``: the caller was trying token auth and must be refused, not
    fall back to another scheme.
    """
    if header is None:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    return text[len(SCHEME) :].strip() if text.startswith(SCHEME) else None


async def token_user(key: str) -> User | None:
    """The active user holding API token ``key``, or None."""
    if not key:
        return None
    token = await Token.objects.select_related("user").filter(key=key).afirst()
    return token.user if token is not None and token.user.is_active else None
