"""``ws/regulation``: a utility / grid operator streams its regulation signal over one authenticated socket.

Authentication (:mod:`vpp.intake.auth`): an API key with scope ``signal`` of a user holding
``markets.submit_regulation_signal``, in the ``Authorization: Api-Key <key>`` header or as the subprotocol
``apikey.<key>`` next to ``vpp.regulation.v1`` (which the server then accepts); a key in the query string, an unknown,
revoked or expired key close with 4401, a key without the scope or permission with 4403. Each text frame is one
value, ``{"product": "pjm:reg-d", "value": 0.42, "at"?: ISO, "portfolio"?: "default"}``; each is dispatched at once
and answered, after it is stored, with ``{"ok": true, "at", "value", "created", "dispatched"}`` or
``{"ok": false, "error"}`` (the socket stays open; a value stamped more than ``REGULATION_SIGNAL_MAX_SKEW_S``
ahead of the server's clock, or for a portfolio with nothing awarded then, is refused this way, the former with a
``window``; one not dispatched says why in ``not_dispatched``). A key limited to a portfolio has frames for another
refused; a key revoked or expired while the socket is open closes it (4401) within ``vpp.intake.auth.KEY_TTL_S``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth import get_user_model

from fleet.selectors import key_portfolios_of, portfolio_refusal, portfolios_meet, signal_portfolios_for
from markets.regulation.models import SignalSource
from markets.regulation.services import RegulationError
from vpp.dispatch.services import SignalRefused, regulation_signal_intake
from vpp.intake.auth import (
    KEY_TTL_S,
    KeyInQueryString,
    Verdict,
    accepted_subprotocol,
    address_blocked,
    key_verdict,
    scope_key,
)

log = logging.getLogger(__name__)


class RegulationSignalConsumer(AsyncWebsocketConsumer):
    # No channel layer: this consumer only answers its own socket, and Channels would otherwise also wait on a
    # channel-layer receive for it, which raises when Redis restarts and closes the utility's connection with 1011.
    # An alias no CHANNEL_LAYERS entry has gives None (channels.layers.get_channel_layer).
    channel_layer_alias = "intake-uses-no-channel-layer"
    user_id: int | None = None
    key: str = ""
    # The portfolios this user may dispatch (fleet.selectors.signal_portfolios_for), read at connect; None: every
    # one. A fleet added later needs a reconnect.
    portfolios: set[str] | None = set()
    portfolios_at = 0.0

    async def connect(self) -> None:
        try:
            key = scope_key(self.scope)
        except KeyInQueryString:
            log.warning(
                "ws/regulation refused from %s: API key in the query string (send it in the Authorization header "
                "or the apikey.<key> subprotocol; URLs are logged)",
                (self.scope.get("client") or ["?"])[0],
            )
            await self.close(code=4401)
            return
        address = str((self.scope.get("client") or [""])[0])
        if address_blocked(address):  # too many unknown keys from there: refused without a lookup
            await self.close(code=4429)
            return
        verdict = await key_verdict(key, address=address)
        if verdict.user_id is None or not verdict.allowed:
            await self.close(code=4401 if verdict.user_id is None else 4403)
            return
        self.user_id, self.key = verdict.user_id, key
        self.portfolios = await database_sync_to_async(_portfolios_of)(verdict)
        self.portfolios_at = time.monotonic()
        await self.accept(subprotocol=accepted_subprotocol(self.scope))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        verdict = await key_verdict(self.key)  # from memory; asks the database again once KEY_TTL_S has passed
        if verdict.user_id != self.user_id or not verdict.allowed:
            await self.close(code=4401 if verdict.user_id is None else 4403)
            return
        try:
            product, portfolio, value, at = parse_signal(json.loads(text_data or "null"))
            if time.monotonic() - self.portfolios_at > KEY_TTL_S:  # memberships and fleets change: read them again
                self.portfolios = await database_sync_to_async(_portfolios_of)(verdict)
                self.portfolios_at = time.monotonic()
            refusal = portfolio_refusal(portfolio, self.portfolios)
            if refusal is not None:
                raise RegulationError(refusal)
            intake = await regulation_signal_intake(
                product=product,
                portfolio=portfolio,
                value=value,
                at=at,
                source=SignalSource.WEBSOCKET,
                user_id=self.user_id,
            )
        except json.JSONDecodeError:
            await self._answer({"ok": False, "error": "frame is not JSON"})
            return
        except SignalRefused as exc:
            await self._answer({"ok": False, "error": str(exc), **({"window": exc.window} if exc.window else {})})
            return
        except RegulationError as exc:
            await self._answer({"ok": False, "error": str(exc)})
            return
        answer: dict[str, Any] = {
            "ok": True,
            "at": intake.at.isoformat(),
            "value": str(intake.value),
            "created": intake.created,
            "dispatched": intake.dispatched,
        }
        if not intake.dispatched:
            answer["not_dispatched"] = intake.why_not
        await self._answer(answer)

    async def _answer(self, body: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(body))


def _portfolios_of(verdict: Verdict) -> set[str] | None:
    """What the key's user may dispatch, narrowed by the key's organisation and portfolio."""
    user = get_user_model().objects.get(pk=int(verdict.user_id or 0))
    key_limit = key_portfolios_of(organisation_id=verdict.organisation_id, portfolio=verdict.portfolio)
    return portfolios_meet(signal_portfolios_for(user), key_limit)


def parse_signal(body: Any) -> tuple[str, str, Any, datetime | None]:
    """(product, portfolio, value, at) of a frame ``{"product": "pjm:reg-d", "value": 0.42, "at"?, "portfolio"?}``.

    Checks the frame's shape only: the value itself is parsed by ``markets.regulation.services.signal_value``.
    """
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
