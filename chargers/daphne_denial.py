"""The ASGI WebSocket denial-response extension for Daphne, so a refused handshake can say 401.

Daphne 4 answers every WebSocket refused before ``accept`` with ``403 Access denied``. OCPP security profile 1
requires ``401 Unauthorized`` for an unknown station or a wrong password, before any OCPP message. The ASGI spec
provides ``websocket.http.response.start``/``.body`` for exactly this; Daphne does not implement it, so this module
teaches its protocol class those two messages (an HTTP status + headers; the body is not sent, autobahn's handshake
failure path writes only the status line and headers) and advertises ``websocket.http.response`` in the scope's
``extensions`` as servers that support it do. Installed once per process by ``chargers.routing``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

EXTENSION = "websocket.http.response"


def install() -> None:
    from autobahn.twisted.websocket import WebSocketServerProtocol
    from autobahn.websocket.types import ConnectionDeny
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    if getattr(WebSocketProtocol, "_denial_response_installed", False):
        return
    original_reply = WebSocketProtocol.handle_reply
    original_create = Server.create_application

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.http.response.start" and hasattr(self, "handshake_deferred"):
            self._denial_status = int(message["status"])
            self._denial_headers = [(k.decode("latin1"), v.decode("latin1")) for k, v in message.get("headers", [])]
            return
        if kind == "websocket.http.response.body" and hasattr(self, "_denial_status"):
            if message.get("more_body"):
                return
            deferred = self.handshake_deferred
            del self.handshake_deferred
            status = self._denial_status
            deferred.errback(ConnectionDeny(code=status, reason=HTTPStatus(status).phrase))
            self.server.protocol_disconnected(self)
            return
        original_reply(self, message)

    def fail_handshake(self: Any, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        headers = [*list(responseHeaders or []), *getattr(self, "_denial_headers", []), ("Content-Length", "0")]
        WebSocketServerProtocol.failHandshake(self, reason, code, headers)

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket":
            scope.setdefault("extensions", {})[EXTENSION] = {}
        return original_create(self, protocol, scope)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol.failHandshake = fail_handshake
    Server.create_application = create_application
    WebSocketProtocol._denial_response_installed = True
