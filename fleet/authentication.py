"""DRF authentication by API key: ``Authorization: Api-Key <key>`` (or ``Bearer <key>``), see :mod:`fleet.keys`.

A request with such a header is authenticated as the key's user and ``request.auth`` is the :class:`ApiKey`, so views
check its scopes (``fleet.selectors.key_allows``) and its organisation / portfolio. An unknown, revoked or expired key,
or one of an inactive user, is answered 401. Listed first in ``DEFAULT_AUTHENTICATION_CLASSES``: DRF takes the
``WWW-Authenticate`` challenge from the first class, and without one it turns 401 into 403.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request

from fleet.keys import api_key_user, key_from_header, unknown_key_seen, unknown_keys_blocked


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        raw = key_from_header(request.META.get("HTTP_AUTHORIZATION"))
        if raw is None:
            return None  # no key offered: the next class (session) may still authenticate the request
        address = str(request.META.get("REMOTE_ADDR", ""))
        if unknown_keys_blocked(address):  # refused without a lookup (fleet.keys)
            raise Throttled(wait=settings.API_UNKNOWN_KEY_WINDOW_S, detail="too many invalid API keys from here")
        found = api_key_user(raw)
        if found is None:
            unknown_key_seen(address, edge="API")
            raise AuthenticationFailed("invalid, revoked or expired API key")
        return found

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
