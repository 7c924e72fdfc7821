"""Authentication and parsing shared by the regulation signal edges (``ws/regulation``).

A token, once verified, is trusted for :data:`TOKEN_TTL_S` seconds from memory so that the database stays off the
signal's path (a revoked token stops working within that time).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rest_framework.authtoken.models import Token

from markets.regulation.services import RegulationError

PERMISSION = "markets.submit_regulation_signal"
TOKEN_TTL_S = 60.0
_tokens: dict[str, tuple[float, int | None, bool]] = {}  # key -> (verified at, user id, may submit)


async def token_user(key: str) -> tuple[int | None, bool]:
    """(user id or None, holds the signal permission) for an API token; cached for TOKEN_TTL_S."""
    cached = _tokens.get(key)
    if cached is not None and time.monotonic() - cached[0] < TOKEN_TTL_S:
        return cached[1], cached[2]
    token = await Token.objects.select_related("user").filter(key=key).afirst()
    user = token.user if token is not None and token.user.is_active else None
    allowed = user is not None and await user.ahas_perm(PERMISSION)
    _tokens[key] = (time.monotonic(), user.pk if user else None, allowed)
    return (user.pk if user else None), allowed


def parse_signal(body: Any) -> tuple[str, str, Any, datetime | None]:
    """(product, portfolio, value, at) from ``{"product": "pjm:reg-d", "value": 0.42, "at"?: ISO, "portfolio"?}``."""
    if not isinstance(body, dict):
        raise RegulationError("body must be a JSON object")
    product, value = body.get("product"), body.get("value")
    if not isinstance(product, str) or not product:
        raise RegulationError("'product' (operator:code, e.g. pjm:reg-d) is required")
    if value is None or isinstance(value, bool):
        raise RegulationError("'value' (normalised signal, -1..1) is required")
    portfolio = body.get("portfolio", "default")
    if not isinstance(portfolio, str) or not 0 < len(portfolio) <= 64:
        raise RegulationError("'portfolio' must be a non-empty string of at most 64 characters")
    at = None
    if body.get("at") is not None:
        try:
            at = datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00"))
        except ValueError as exc:
            raise RegulationError(f"'at' is not an ISO 8601 instant: {body['at']!r}") from exc
    return product, portfolio, value, at
