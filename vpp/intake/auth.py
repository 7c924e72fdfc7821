"""Who may send regulation signal values over the WebSocket edge (``ws/regulation``).

The API key comes from the ``Authorization: Api-Key <key>`` (or ``Bearer <key>``) header of the handshake or, for
clients that cannot set headers on a WebSocket (browsers), from the subprotocol list: offer
``["vpp.regulation.v1", "apikey.<key>"]`` and the server accepts ``vpp.regulation.v1`` (never echoing the key). A key
in the query string (``?token=``, ``?key=``, ...) is refused: URLs end up in access logs, proxies and browser history.

The rule, the same as the REST intake's: the key must carry scope ``signal`` and its user must hold
``markets.submit_regulation_signal``; a key naming a ``portfolio`` sends values for that portfolio only.

A verdict is kept in memory for :data:`KEY_TTL_S` seconds so that the database stays off the signal's path; an open
socket asks again after that, so a revoked or expired key stops within :data:`KEY_TTL_S` even mid-stream. The cache
is keyed by the key's SHA-256 (raw keys are not kept in it) and holds at most :data:`CACHE_MAX` verdicts, least
recently used dropped first. Keys that do not exist are not cached at all, so made-up keys neither grow it nor evict
real ones; they are counted per client address, and an address past its limit is refused without a query.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from fleet.keys import UNKNOWN_KEYS, aapi_key_user, key_from_header, unknown_key_seen, unknown_keys_blocked
from fleet.models import ApiScope
from fleet.selectors import may_send_signals

log = logging.getLogger(__name__)

SUBPROTOCOL = "vpp.regulation.v1"
KEY_SUBPROTOCOL_PREFIX = "apikey."
KEY_TTL_S = 30.0
CACHE_MAX = 1024
QUERY_KEY_NAMES = ("token", "key", "api_key", "apikey")


@dataclass(frozen=True, slots=True)
class Verdict:
    user_id: int | None  # None: no such usable key (401)
    allowed: bool  # scope signal and the permission (else 403)
    portfolio: str = ""  # "": any portfolio
    organisation_id: int | None = None  # the key's organisation: its fleets' portfolios only


_REFUSED = Verdict(None, False)
_verdicts: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()  # sha256(key) -> (verified at, verdict)


class KeyInQueryString(ValueError):
    """The handshake carried an API key in its URL: refused, whatever else it carried."""


def scope_key(scope: dict[str, Any]) -> str:
    """The API key of a WebSocket handshake: the ``Authorization`` header, else an ``apikey.<key>`` subprotocol;
    "" if none. Raises :class:`KeyInQueryString` when the URL carries one."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if any(name in query for name in QUERY_KEY_NAMES):
        raise KeyInQueryString("API keys are not accepted in the query string")
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            key = key_from_header(value)
            if key is not None:
                return key
    for protocol in scope.get("subprotocols", []) or []:
        if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
            return protocol[len(KEY_SUBPROTOCOL_PREFIX) :]
    return ""


def accepted_subprotocol(scope: dict[str, Any]) -> str | None:
    """``vpp.regulation.v1`` when the client offered it (it must, when it offered any), else None."""
    return SUBPROTOCOL if SUBPROTOCOL in (scope.get("subprotocols") or []) else None


async def key_verdict(key: str, *, address: str = "") -> Verdict:
    """Who the key acts as and whether it may send signal values; cached for KEY_TTL_S, at most CACHE_MAX entries.

    Only keys that exist are cached: a flood of made-up keys would otherwise evict the real ones (and cost a query
    each all the same). Unknown keys are counted per client ``address`` instead (fleet.keys): past the limit that
    address's keys are refused without a query (:func:`address_blocked`)."""
    if not key:
        return _REFUSED
    digest = hashlib.sha256(key.encode()).hexdigest()
    now = time.monotonic()
    cached = _verdicts.get(digest)
    if cached is not None and now - cached[0] < KEY_TTL_S:
        _verdicts.move_to_end(digest)
        return cached[1]
    if unknown_keys_blocked(address):
        return _REFUSED
    found = await aapi_key_user(key)
    if found is None:
        _verdicts.pop(digest, None)  # a key revoked since: its old verdict goes
        unknown_key_seen(address, edge="ws/regulation")
        return _REFUSED
    user, api_key = found
    allowed = api_key.allows(ApiScope.SIGNAL) and await database_sync_to_async(may_send_signals)(user)
    verdict = Verdict(user.pk, allowed, api_key.portfolio, api_key.organisation_id)
    _verdicts[digest] = (now, verdict)
    _verdicts.move_to_end(digest)
    while len(_verdicts) > CACHE_MAX:
        _verdicts.popitem(last=False)
    return verdict


def address_blocked(address: str) -> bool:
    """True when this client address sent too many unknown keys lately: refuse it without looking its key up."""
    return unknown_keys_blocked(address)


def forget_all() -> None:
    """Drop every cached verdict and unknown-key count (tests; a process that must apply a revocation at once)."""
    _verdicts.clear()
    UNKNOWN_KEYS.clear()
