"""Runs the enabled programs' clients in one asyncio loop (``python manage.py utility run``, or inside the server).

Where: dispatch goes out from this process (``vpp.dispatch``): with ``REDIS_URL`` set the fan-out reaches the
stations of every server process (one group message); on the embedded in-memory channel layer only a server
process reaches its stations, so there the clients run inside it (``UTILITY_IN_SERVER=1``:
:class:`InServerClients` starts them on the server's loop at its first connection). A program whose client fails
to start (credentials missing, the server down) is retried, and a newly enabled one picked up, every
``UTILITY_RETRY_S``; the error is on its status page.

Changes take effect without a restart: every ``UTILITY_RELOAD_S`` the programs are read again. A program disabled
or deleted has its client stopped and its events' dispatch withdrawn (each deployment in force ends now, its
setpoints released; the events are opted out with the reason). A program whose configuration changed has its client
stopped and started again with the new one; when what its events dispatch changed (protocol, endpoint, program,
client name, portfolio, product, W per level) their dispatch is withdrawn first, otherwise (credentials, poll and
report periods) the runs go on and the new client takes them up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from vpp.dispatch.reserve import reserve_run_wake, reserve_runs
from vpp.serve import WORKER_ENV
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import Protocol, UtilityProgram
from vpp.utility.selectors import (
    ENDPOINT_RULE,
    CredentialError,
    Credentials,
    endpoint_allowed,
    program_credentials,
    program_deployment_ids,
    programs_to_run,
)
from vpp.utility.services import (
    DISABLED_WITHDRAWN,
    connection_error,
    utility_events_withdraw,
    utility_program_dispatch_end,
)

LOG = logging.getLogger(__name__)
SUPPORTED = (Protocol.OPENADR_2B, Protocol.OPENADR_3, Protocol.IEEE_2030_5)
# What a program's events dispatch, and where they come from: a change withdraws the dispatch of its events.
DISPATCH_FIELDS = ("protocol", "endpoint", "program_ref", "client_name", "portfolio", "product_id", "level_step_w")
# What its client is started with: a change restarts the client (``name`` and the status fields restart nothing).
CLIENT_FIELDS = (*DISPATCH_FIELDS, "cert_file", "key_file", "ca_file", "secret_env", "poll_s", "report_s", "enabled")
STOP_TIMEOUT_S = 10.0


def config_of(program: UtilityProgram, fields: tuple[str, ...] = CLIENT_FIELDS) -> tuple[Any, ...]:
    return (program.organisation_id, *(getattr(program, f) for f in fields))


@dataclass
class Held:
    """A program's running client and the configuration it was started with."""

    client: object
    config: tuple[Any, ...]
    dispatch: tuple[Any, ...]


async def program_start(program: UtilityProgram, runs: EventRuns) -> object | None:
    """The program's running client, or None (and its status says why). A program that cannot start (a credential
    missing or unreadable, a key that does not match its certificate) never stops the others."""
    if not endpoint_allowed(program.endpoint):  # stored before the rule, or the operator's setting changed since
        await database_sync_to_async(connection_error)(program_id=program.pk, error=f"endpoint: {ENDPOINT_RULE}")
        return None
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
    """Run every enabled program (``ids``: those only) until cancelled: started, retried when they failed, stopped
    or restarted when they are disabled, deleted or changed (module docstring)."""
    runs = EventRuns()
    running: dict[int, Held] = {}
    failed: dict[int, tuple[tuple[Any, ...], float]] = {}  # program -> the configuration that failed, when
    swept: set[int] = set()  # disabled programs whose dispatch was ended since this runner started
    try:
        while True:
            try:
                programs = {p.pk: p for p in await database_sync_to_async(programs_to_run)(ids=ids, disabled=True)}
                for pk, program in programs.items():  # disabled while no runner ran: what it left in force ends now
                    if not program.enabled and pk not in running and pk not in swept:
                        await _withdraw(runs, pk, DISABLED_WITHDRAWN)
                        swept.add(pk)
                    elif program.enabled:
                        swept.discard(pk)
                for pk, held in list(running.items()):
                    program = programs.get(pk)
                    if program is not None and program.enabled and config_of(program) == held.config:
                        continue
                    del running[pk]
                    gone = program is None or not program.enabled
                    why = "deleted" if program is None else "disabled" if not program.enabled else "re-enrolled"
                    if gone:  # the discharge ends first: the client's goodbye (2.0b opt-outs) may take seconds
                        await _withdraw(runs, pk, f"withdrawn: the program was {why}")
                    await _client_stop(pk, held.client)
                    if program is None or gone or config_of(program, DISPATCH_FIELDS) != held.dispatch:
                        # (again, for a program gone: whatever its client started while it was being stopped)
                        await _withdraw(runs, pk, f"withdrawn: the program was {why}")
                    LOG.info("utility program %s: client stopped (%s)", pk, "changed" if program else "deleted")
                now = time.monotonic()
                for pk, program in programs.items():
                    if pk in running or not program.enabled:
                        continue
                    config, tried = failed.get(pk, ((), -1e18))
                    if config == config_of(program) and now - tried < settings.UTILITY_RETRY_S:
                        continue  # failed with this configuration: retried every UTILITY_RETRY_S, at once when changed
                    try:
                        client = await program_start(program, runs)
                    except Exception:  # one client's failure to start never stops the others
                        LOG.exception("utility program %s: its client could not start", pk)
                        client = None
                    if client is None:
                        failed[pk] = (config_of(program), now)
                        continue
                    failed.pop(pk, None)
                    running[pk] = Held(client, config_of(program), config_of(program, DISPATCH_FIELDS))
                    LOG.info("utility program %s (%s) running", pk, program)
            except Exception:  # a database blip (or a bug): logged, every client kept, the next reload tries again
                LOG.exception("utility programs: reload failed; retried in %s s", settings.UTILITY_RELOAD_S)
            await asyncio.sleep(settings.UTILITY_RELOAD_S)
    finally:
        await runs.stop()
        for pk, held in running.items():
            await _client_stop(pk, held.client)


async def _client_stop(pk: int, client: object) -> None:
    stop = getattr(client, "stop", None)
    if stop is None:
        return
    try:
        await asyncio.wait_for(stop(), STOP_TIMEOUT_S)
    except Exception:  # a client that cannot close cleanly is dropped all the same (its tasks are cancelled)
        LOG.exception("utility program %s: its client did not stop cleanly", pk)


async def _withdraw(runs: EventRuns, pk: int, reason: str) -> None:
    """The program's events are dispatched no more: its runs here withdrawn, its events opted out, and what any
    process put in force for it (deployments, caps) ended now."""
    refs = runs.withdraw_program(program_id=pk)
    count = await database_sync_to_async(utility_events_withdraw)(program_id=pk, reason=reason)
    if refs or count:
        LOG.warning("utility program %s: %s event(s) %s", pk, count, reason)
    # The stored ends move to now: the dispatchers see it at their next reload, each reserve run within its end
    # check (END_CHECK_S), and every setpoint sent ends by itself within DISPATCH_HOLD_S. This process's runs of the
    # program's deployments are woken at once, whoever ended them (the disable itself may have, through the API):
    # each re-reads its end and releases its setpoints. Not awaited: a run clearing its stations must not hold the
    # reload of every other program.
    await database_sync_to_async(utility_program_dispatch_end)(program_id=pk, reason=reason)
    here = [run.event.pk for run in reserve_runs()]
    if here:
        for deployment in await database_sync_to_async(program_deployment_ids)(program_id=pk, among=here):
            await reserve_run_wake(event_pk=deployment)


def in_first_worker() -> bool:
    """This server process is ``vpp.serve``'s worker 0, or its only process: with ``--workers N`` the clients run in
    worker 0 only (one client per program; their dispatch reaches every worker's stations over Redis)."""
    return os.environ.get(WORKER_ENV, "0") == "0"


class InServerClients:
    """ASGI wrapper: with ``UTILITY_IN_SERVER``, the first connection this server process serves starts
    :func:`programs_run` on its loop (Daphne has no startup hook; chargers and browsers connect at once) -- in
    worker 0 only when the server runs several (:func:`in_first_worker`)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if self.task is None and settings.UTILITY_IN_SERVER and in_first_worker():
            self.task = asyncio.get_running_loop().create_task(programs_run(), name="utility-clients")
            self.task.add_done_callback(_ended)
            LOG.info("utility clients running in this server process")
        return await self.app(scope, receive, send)


def _ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        LOG.error("utility clients stopped: %r (restart the server)", task.exception())
