"""``station call`` without a shared channel layer: ask the running server to run ``station_call`` for us.

With the in-memory channel layer (no REDIS_URL) only the server process can reach its sockets, so the command
posts to ``/api/stations/<id>/call`` with an API key of scope ``command`` that the caller supplies (keys are hashed at
rest and issued by the fleet layer: ``manage.py station call`` passes ``$VPP_API_KEY`` or a short-lived one).
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
    api_key: str,
    server: str | None = None,
    client: str = "",
) -> dict[str, Any]:
    """Run the call in the server; ``client`` (e.g. ``cli:alice``) is recorded next to the user in the audit."""
    base = (server or os.environ.get("VPP_SERVER_URL") or "http://127.0.0.1:8000").rstrip("/")
    url = f"{base}/api/stations/{urllib.parse.quote(station_id, safe='')}/call"
    body = json.dumps({"action": action, "payload": payload, "timeout": timeout, "client": client}).encode()
    request = urllib.request.Request(  # noqa: S310 - the operator names the server; http(s) only below
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"},
    )
    if not url.startswith(("http://", "https://")):
        raise RemoteCallError(f"server URL must be http(s): {base}")
    try:
        with urllib.request.urlopen(request, timeout=timeout + 5) as response:  # noqa: S310
            return dict(json.loads(response.read())["payload"])
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            problem = json.loads(detail)
            detail = problem.get("error") or problem.get("detail") or detail
        raise RemoteCallError(f"HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise RemoteCallError(f"cannot reach the server at {base}: {exc.reason}") from exc
