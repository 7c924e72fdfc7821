"""Runs the enabled programs' clients in one asyncio loop (``python manage.py utility run``, or inside the server).

Where: dispatch goes out from this process (``vpp.dispatch``): with ``REDIS_URL`` set the fan-out reaches the
stations of every server process (one group message); on the embedded in-memory channel layer only a server
process reaches its stations, so there the clients run inside it (``UTILITY_IN_SERVER=1``:
:class:`InServerClients` starts them on the server's loop at its first connection). A program whose client fails
to start (credentials missing, the server down) is retried, and a newly enabled one picked up, every
``UTILITY_RETRY_S``; the error is on its status page.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from vpp.utility.dispatch import EventRuns
from vpp.utility.models import Protocol, UtilityProgram
from vpp.utility.selectors import CredentialError, Credentials, program_credentials, programs_to_run
from vpp.utility.services import connection_error

LOG = logging.getLogger(__name__)
SUPPORTED = (Protocol.OPENADR_2B, Protocol.OPENADR_3, Protocol.IEEE_2030_5)


async def program_start(program: UtilityProgram, runs: EventRuns) -> object | None:
    """The program's running client, or None (and its status says why). A program that cannot start (a credential
    missing or unreadable, a key that does not match its certificate) never stops the others."""
    try:
        credentials = await database_sync_to_async(program_credentials)(program)
        return await _client_start(program, runs, credentials)
    except CredentialError as exc:
        await database_sync_to_async(connection_error)(program_id=program.pk, error=str(exc))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a certificate or key it cannot use
        LOG.exception("utility program %s: its client could not start", program.pk)
        await database_sync_to_async(connection_error)(program_id=program.pk, error=f"cannot start: {exc}")
    return None


async def _client_start(program: UtilityProgram, runs: EventRuns, credentials: Credentials) -> object | None:
    if program.protocol == Protocol.OPENADR_2B:
        from vpp.utility.openadr2 import Ven2b  # openleadr is loaded only where a 2.0b program runs

        ven = Ven2b(program, runs=runs, credentials=credentials)
        return ven if await ven.start() else None
    if program.protocol == Protocol.OPENADR_3:
        from vpp.utility.openadr3 import Ven3

        ven3 = Ven3(program, runs=runs, credentials=credentials)
        return ven3 if await ven3.start() else None
    if program.protocol == Protocol.IEEE_2030_5:
        from vpp.utility.csip import Csip, CsipError

        try:
            client = Csip(program, runs=runs, credentials=credentials)
        except CsipError as exc:
            await database_sync_to_async(connection_error)(program_id=program.pk, error=f"2030.5: {exc}")
            return None
        return client if await client.start() else None
    await database_sync_to_async(connection_error)(
        program_id=program.pk, error=f"{program.get_protocol_display()} clients are not available in this version"
    )
    return None


async def programs_run(*, ids: list[int] | None = None) -> None:
    """Start every enabled program (``ids``: those only) and keep retrying the ones that failed, until cancelled."""
    runs = EventRuns()
    running: dict[int, object] = {}
    try:
        while True:
            for program in await database_sync_to_async(programs_to_run)(ids=ids):
                if program.pk in running:
                    continue
                client = await program_start(program, runs)
                if client is not None:
                    running[program.pk] = client
                    LOG.info("utility program %s (%s) running", program.pk, program)
            await asyncio.sleep(settings.UTILITY_RETRY_S)
    finally:
        await runs.stop()
        for client in running.values():
            stop = getattr(client, "stop", None)
            if stop is not None:
                await stop()


class InServerClients:
    """ASGI wrapper: with ``UTILITY_IN_SERVER``, the first connection this server process serves starts
    :func:`programs_run` on its loop (Daphne has no startup hook; chargers and browsers connect at once)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if self.task is None and settings.UTILITY_IN_SERVER:
            self.task = asyncio.get_running_loop().create_task(programs_run(), name="utility-clients")
            self.task.add_done_callback(_ended)
            LOG.info("utility clients running in this server process")
        return await self.app(scope, receive, send)


def _ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        LOG.error("utility clients stopped: %r (restart the server)", task.exception())
