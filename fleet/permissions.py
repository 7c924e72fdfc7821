"""DRF permissions shared by the REST edges of every layer: who may call at all, and what an API key's scopes allow.

Scoping (which rows) is the selectors' job (``fleet.selectors``); these classes only refuse a call outright (403):
anonymous callers, an API key without the scope a method needs, a key writing where keys may only read.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from fleet.models import ApiKey, ApiScope
from fleet.selectors import key_allows


class KeyScoped(BasePermission):
    """Signed in (session, token or API key); an API key needs ``read_scope`` for safe methods and ``write_scope``
    for the others (``write_scope`` None: keys may only read, writes are session-only)."""

    read_scope: str = ApiScope.READ
    write_scope: str | None = None

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            return key_allows(request.auth, self.read_scope)
        if self.write_scope is None:
            return not isinstance(request.auth, ApiKey)
        return key_allows(request.auth, self.write_scope)


class ReadKeys(KeyScoped):
    """Keys read with scope ``read`` and never write (bids, awards, reports)."""


class FleetWriteKeys(KeyScoped):
    """Keys read with ``read`` and write with ``fleet:write`` (vehicles, departures, SoC)."""

    write_scope = ApiScope.FLEET_WRITE
