"""``station call`` without a shared channel layer: ask the running server to run ``station_call`` for us.

With the in-memory channel layer (no REDIS_URL) only the server process can reach its sockets, so the command
posts to ``/api/stations/<id>/call`` with the API key in ``$VPP_API_KEY`` (a staff user's key with scope ``command``:
``manage.py token add <user> --scopes command --expires 1d``; keys are hashed at rest, so none can be looked up here).
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class RemoteCallError(Exception):
    pass


def station_call_remote(
    *,
    station_id: str,
    action: str,
    payload: dict[str, Any],
    timeout: float,
    server: str | None = None,
    username: str | None = None,
) -> dict[str, Any]:
    base = (server or os.environ.get("VPP_SERVER_URL") or "http://127.0.0.1:8000").rstrip("/")
    url = f"{base}/api/stations/{urllib.parse.quote(station_id, safe='')}/call"
    body = json.dumps({"action": action, "payload": payload, "timeout": timeout}).encode()
    request = urllib.request.Request(  # noqa: S310 - the operator names the server; http(s) only below
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {_api_key(username)}"},
    )
    if not url.startswith(("http://", "https://")):
        raise RemoteCallError(f"server URL must be http(s): {base}")
    try:
        with urllib.request.urlopen(request, timeout=timeout + 5) as response:  # noqa: S310
            return dict(json.loads(response.read())["payload"])
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        raise RemoteCallError(f"HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise RemoteCallError(f"cannot reach the server at {base}: {exc.reason}") from exc


def _api_key(username: str | None) -> str:
    key = os.environ.get("VPP_API_KEY", "").strip()
    if not key:
        who = username or "<staff user>"
        raise RemoteCallError(
            f"set VPP_API_KEY to an API key with scope 'command' (python manage.py token add {who} --scopes command"
            " --expires 1d)"
        )
    return key
