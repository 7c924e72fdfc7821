"""``ws/regulation``: a utility / grid operator streams its regulation signal over one authenticated socket.

Authentication: the API token in the ``Authorization: Token <key>`` header or the ``token`` query parameter, of a
user holding ``markets.submit_regulation_signal``; anything else is refused (close code 4401 / 4403). Each text
frame is one value, ``{"product": "pjm:reg-d", "value": 0.42, "at"?: ISO, "portfolio"?: "default"}``; each is
dispatched at once and answered, after it is stored, with ``{"ok": true, "at", "value", "created", "dispatched"}``
or ``{"ok": false, "error"}`` (the socket stays open).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer

from markets.regulation.models import SignalSource
from markets.regulation.services import RegulationError
from vpp.services import regulation_signal_intake
from vpp.signal_auth import parse_signal, token_user


class RegulationSignalConsumer(AsyncWebsocketConsumer):
    user_id: int | None = None

    async def connect(self) -> None:
        key = _token(self.scope)
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


def _token(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value.startswith(b"Token "):
            return value[6:].decode("latin-1").strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [""])[0]
