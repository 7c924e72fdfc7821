"""A connection opened with a client certificate (security profile 3) ends when the certificate does.

The handshake checks the certificate once (``chargers.handshake``); the socket may then stay open for weeks (Daphne
runs without a WebSocket timeout), and a station whose key was compromised would go on receiving commands. So each
such connection is registered here under its certificate's serial and closed (``OcppConsumer.certificate_close``:
a 4xxx code, a logged reason, a security event):

* when the certificate is revoked (``chargers.pki.issue.certificate_revoke``, after its COMMIT): at once in this
  process, on every event loop holding a socket with that serial, from whichever thread revoked it; and, when the
  channel layer spans processes (Redis), in the others by an ``ocpp.certificate_revoked`` message to the channel
  the station's row names, as a replaced connection is told ``ocpp.replaced``;
* when no notice could arrive (``pki revoke`` run in another process without Redis, Redis away): each process asks
  the register every ``OCPP_OWNERSHIP_CHECK_S``, one query for all its certificate sockets;
* when the certificate expires: a timer on the connection's loop at its notAfter.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from chargers.models import PkiCertificate, Station
from chargers.writer import writer_for_loop

LOG = logging.getLogger(__name__)
REVOKED_MESSAGE = "ocpp.certificate_revoked"


class Holder(Protocol):
    """What this module needs of a connection (chargers.consumers.OcppConsumer)."""

    closed: bool

    @property
    def held_station_id(self) -> str: ...

    async def certificate_close(self, *, expired: bool, reason: str) -> None: ...


_lock = threading.Lock()  # revocations come from any thread; sockets register on their loops
_holders: dict[asyncio.AbstractEventLoop, dict[str, set[Holder]]] = {}  # loop -> serial -> connections
_timers: dict[Holder, asyncio.TimerHandle] = {}
_checks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
_closing: set[asyncio.Task[None]] = set()  # strong references until done


def session_watch(holder: Holder, *, serial: str, not_after: datetime) -> None:
    """Watch ``holder``, opened with the certificate ``serial`` valid until ``not_after``, from now on."""
    loop = asyncio.get_running_loop()
    with _lock:
        _holders.setdefault(loop, {}).setdefault(serial, set()).add(holder)
    left = max((not_after - datetime.now(UTC)).total_seconds(), 0.0)
    _timers[holder] = loop.call_later(left, _close, holder, True, "")
    check = _checks.get(loop)
    if check is None or check.done():
        _checks[loop] = loop.create_task(_check_forever(), name="csms-certificate-check")


def session_forget(holder: Holder, *, serial: str) -> None:
    loop = asyncio.get_running_loop()
    with _lock:
        of_serial = _holders.get(loop, {}).get(serial)
        if of_serial is not None:
            of_serial.discard(holder)
            if not of_serial:
                del _holders[loop][serial]
    timer = _timers.pop(holder, None)
    if timer is not None:
        timer.cancel()


def sessions_revoked(serials: Collection[str], *, reason: str) -> int:
    """Close this process's connections presenting any of ``serials``, from any thread; returns how many."""
    wanted = set(serials)
    with _lock:
        targets = [
            (loop, holder)
            for loop, by_serial in _holders.items()
            for serial in wanted & by_serial.keys()
            for holder in by_serial[serial]
        ]
    for loop, holder in targets:
        try:  # a fresh context: not the revoking thread's (a sync_to_async thread's context would be inherited)
            loop.call_soon_threadsafe(_close, holder, False, reason, context=contextvars.Context())
        except RuntimeError:  # that loop has closed, and its sockets with it
            continue
    return len(targets)


def revoked_notify(*, serials: Sequence[str], station_ids: Sequence[str], reason: str) -> None:
    """After a revocation's COMMIT (sync code, any thread but an event loop's): close the connections presenting
    these certificates here, and tell the stations' channels in other processes when there are others."""
    sessions_revoked(serials, reason=reason)
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer) or not station_ids:
        return  # one process: done above (the register check covers a revocation from another process)
    channels = list(
        Station.objects.filter(station_id__in=station_ids)
        .exclude(channel_name="")
        .values_list("channel_name", flat=True)
    )
    if not channels:
        return
    message = {"type": REVOKED_MESSAGE, "serials": list(serials), "reason": reason}
    try:
        async_to_sync(_send_all)(layer, channels, message)
    except Exception:  # the register check closes them within OCPP_OWNERSHIP_CHECK_S
        LOG.warning("could not tell the connections of %s that their certificate is revoked", ", ".join(station_ids),
                    exc_info=True)  # fmt: skip


async def _send_all(layer: Any, channels: list[str], message: dict[str, Any]) -> None:
    for channel in channels:
        await layer.send(channel, message)


def revoked_serials_many(jobs: Sequence[tuple[str, ...]]) -> list[dict[str, str]]:
    """Batcher function: for each job (serials), those the register marks revoked and why; one query."""
    wanted = {serial for job in jobs for serial in job}
    revoked = dict(
        PkiCertificate.objects.filter(serial__in=wanted, revoked_at__isnull=False).values_list(
            "serial", "revocation_reason"
        )
    )
    return [{serial: revoked[serial] for serial in job if serial in revoked} for job in jobs]


async def sessions_check() -> int:
    """Close this loop's connections whose certificate the register marks revoked; returns how many."""
    loop = asyncio.get_running_loop()
    with _lock:
        by_serial = {serial: set(holders) for serial, holders in _holders.get(loop, {}).items()}
    if not by_serial:
        return 0
    revoked = await writer_for_loop(revoked_serials_many).submit(tuple(by_serial))
    closed = 0
    for serial, reason in revoked.items():
        for holder in by_serial[serial]:
            if not holder.closed:
                LOG.warning("%s's certificate %s was revoked without notice here: closing", holder.held_station_id,
                            serial)  # fmt: skip
                await holder.certificate_close(expired=False, reason=reason)
                closed += 1
    return closed


def _close(holder: Holder, expired: bool, reason: str) -> None:
    if holder.closed:
        return
    task = asyncio.get_running_loop().create_task(holder.certificate_close(expired=expired, reason=reason))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _check_forever() -> None:
    loop = asyncio.get_running_loop()
    while _holders.get(loop):
        await asyncio.sleep(settings.OCPP_OWNERSHIP_CHECK_S)
        try:
            await sessions_check()
        except Exception:  # the database is away: the next round tries again
            LOG.warning("certificate check failed", exc_info=True)
    _checks.pop(loop, None)
