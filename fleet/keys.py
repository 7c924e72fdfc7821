"""API keys on the wire: which header carries one, and who a raw key acts as.

Clients send ``Authorization: Api-Key <key>`` (the djangorestframework-api-key convention) or, for HTTP and
WebSocket libraries that only know bearer tokens, ``Authorization: Bearer <key>``; both mean the same. The key is
checked against its hash (``ApiKey.objects.get_from_key``: only the 8-character prefix is stored in clear). One lookup
for every edge: DRF's :class:`fleet.authentication.ApiKeyAuthentication`, the regulation WebSocket and the station
call endpoint (the latter through DRF's configured authentication classes).
"""

from __future__ import annotations

import logging
from typing import cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User

from chargers.limits import FailureCounter
from fleet.models import ApiKey

log = logging.getLogger(__name__)

SCHEMES = ("Api-Key", "Bearer")


def key_from_header(header: str | bytes | None) -> str | None:
    """The key of an ``Authorization: Api-Key <key>`` (or ``Bearer <key>``) value; None when the header is absent or
    names another scheme (Basic, Token, ...). A scheme with no key gives ``""``: the caller tried key auth and must
    be refused, not fall back to another scheme."""
    if header is None:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    scheme, _, rest = text.strip().partition(" ")
    if scheme.lower() not in {s.lower() for s in SCHEMES}:
        return None
    return rest.strip()


def api_key_user(raw: str) -> tuple[User, ApiKey] | None:
    """(user, key) for a raw API key that is known, matches its hash, is neither revoked nor expired, and whose user
    is active; None otherwise (the caller answers 401 without saying which)."""
    if not raw or "." not in raw:
        return None
    try:
        key = cast(
            ApiKey, ApiKey.objects.get_from_key(raw)
        )  # refuses revoked keys and a raw key that does not match the hash
    except ApiKey.DoesNotExist:
        return None
    if key.has_expired:
        return None
    user: User = key.user
    if not user.is_active:
        return None
    return user, key


aapi_key_user = sync_to_async(api_key_user)


# --- unknown keys per client address ----------------------------------------------------------------------------
# Each unknown key costs a database lookup. Past API_UNKNOWN_KEYS_PER_ADDRESS of them from one address within the
# window, that address's keys are refused without a lookup (429 on REST, 4429 on ws/regulation) until the window
# has passed: guessing keys costs us nothing more. In memory, per process, at most 10,000 addresses (chargers.limits).
UNKNOWN_KEYS = FailureCounter()


def unknown_keys_blocked(address: str) -> bool:
    window = settings.API_UNKNOWN_KEY_WINDOW_S
    return bool(address) and UNKNOWN_KEYS.count(address, window_s=window) >= settings.API_UNKNOWN_KEYS_PER_ADDRESS


def unknown_key_seen(address: str, *, edge: str) -> None:
    """Count an unknown, revoked or expired key from ``address``; logged at the first and when it is blocked."""
    if not address:
        return
    failures = UNKNOWN_KEYS.failed(address, window_s=settings.API_UNKNOWN_KEY_WINDOW_S)
    if failures == 1:
        log.warning("%s: invalid API key from %s", edge, address)
    elif failures == settings.API_UNKNOWN_KEYS_PER_ADDRESS:
        log.warning("%s: %d invalid API keys from %s; its keys are refused unchecked for %g s", edge, failures,
                    address, settings.API_UNKNOWN_KEY_WINDOW_S)  # fmt: skip
