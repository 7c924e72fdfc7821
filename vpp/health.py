"""``GET /healthz``: can this server process serve? For a load balancer's health check (deploy/haproxy-cluster.cfg).

Unauthenticated and cheap: one ``SELECT 1`` on the database and one round trip to the channel layer (a ZREM of a
member that is never there: Redis is asked, nothing is left behind). 200 when both answer within
:data:`CHECK_TIMEOUT_S`, else 503, so the balancer stops sending stations and requests to a node that could not serve
them. The answer says which dependency is down and nothing else (no host, no error text, no version, no count): the
reason goes to the log, once per outage (``chargers.outage``).

The database is asked on a thread of its own with a connection of its own: a database that accepts TCP and answers
nothing (paused, overloaded) blocks that thread, not the server's sync thread; while such a check is still hanging,
the next ones answer "down" at once instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from chargers.outage import Outage

CHECK_TIMEOUT_S = 2.0
DATABASE = Outage("database (health check)")
CHANNEL_LAYER = Outage("channel layer (health check)")
_PROBE_GROUP, _PROBE_CHANNEL = "vpp.healthz", "healthz.probe"

_db_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz-db")
_db_pending: concurrent.futures.Future[None] | None = None


def _select_one() -> None:
    # A connection per check, closed at once: opening one is part of being reachable (a server at its connection
    # limit is not), and none is left open on this thread between checks.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


async def _database() -> bool:
    global _db_pending
    if _db_pending is not None and not _db_pending.done():
        DATABASE.failed(TimeoutError(f"the previous check is still waiting (> {CHECK_TIMEOUT_S:g} s)"))
        return False
    _db_pending = _db_thread.submit(_select_one)
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(_db_pending)), CHECK_TIMEOUT_S)
    except Exception as exc:
        DATABASE.failed(exc if str(exc) else TimeoutError(f"no answer within {CHECK_TIMEOUT_S:g} s"))
        return False
    DATABASE.recovered()
    return True


async def _channel_layer() -> bool:
    layer: Any = get_channel_layer()
    if layer is None:
        CHANNEL_LAYER.failed(RuntimeError("no channel layer configured"))
        return False
    try:
        await asyncio.wait_for(layer.group_discard(_PROBE_GROUP, _PROBE_CHANNEL), CHECK_TIMEOUT_S)
    except Exception as exc:
        CHANNEL_LAYER.failed(exc if str(exc) else TimeoutError(f"no answer within {CHECK_TIMEOUT_S:g} s"))
        return False
    CHANNEL_LAYER.recovered()
    return True


@require_safe
async def healthz(request: HttpRequest) -> JsonResponse:
    database, channel_layer = await asyncio.gather(_database(), _channel_layer())
    checks = {"database": "ok" if database else "down", "channel_layer": "ok" if channel_layer else "down"}
    healthy = database and channel_layer
    response = JsonResponse({"status": "ok" if healthy else "down", **checks}, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response
