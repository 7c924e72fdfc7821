"""``ws/regulation``: a utility / grid operator streams its regulation signal over one authenticated socket.

Authentication (:mod:`vpp.intake.auth`): the API token in the ``Authorization: Token <key>`` header or the
``token`` query parameter, of a user holding ``markets.submit_regulation_signal``; anything else is refused (close
code 4401 / 4403). Each text frame is one value, ``{"product": "pjm:reg-d", "value": 0.42, "at"?: ISO,
"portfolio"?: "default"}``; each is dispatched at once and answered, after it is stored, with ``{"ok": true, "at",
"value", "created", "dispatched"}`` or ``{"ok": false, "error"}`` (the socket stays open).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from markets.regulation.models import SignalSource
from markets.regulation.services import RegulationError
from vpp.dispatch.services import regulation_signal_intake
from vpp.intake.auth import scope_token, token_user


class RegulationSignalConsumer(AsyncWebsocketConsumer):
    user_id: int | None = None

    async def connect(self) -> None:
        key = scope_token(self.scope)
        user_id, allowed = await token_user(key) if key else (None, False)
        if user_id is None or not allowed:
            await self.close(code=4401 if user_id is None else 4403)
            return
        self.user_id = user_id
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            product, portfolio, value, at = parse_signal(json.loads(text_data or "null"))
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
        except RegulationError as exc:
            await self._answer({"ok": False, "error": str(exc)})
            return
        await self._answer(
            {
                "ok": True,
                "at": intake.at.isoformat(),
                "value": str(intake.value),
                "created": intake.created,
                "dispatched": intake.dispatched,
            }
        )

    async def _answer(self, body: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(body))


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
