"""Each socket finds out when another connection took its station over, even if nobody told it.

A new connection claims the station (its channel name in the station's row) and tells the previous connection
``ocpp.replaced`` over the channel layer. That notice can be lost: the send fails (Redis away), or two processes
claim the same station at the same moment and each reads the other's claim as not yet made. The loser would stay
connected, its station believing it commandable. So every process checks, every ``OCPP_OWNERSHIP_CHECK_S``, with one
query for all its sockets, that each station's row still names the socket holding it; a socket whose station names
another closes with 4000 (replaced). A row naming no socket (released) is left alone: only a newer claim replaces.
Nothing of this runs per frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from django.conf import settings

from chargers.models import Station
from chargers.writer import writer_for_loop

LOG = logging.getLogger(__name__)


class Holder(Protocol):
    """What the check needs of a connection (chargers.consumers.OcppConsumer)."""

    channel_name: str
    closed: bool

    @property
    def held_station_id(self) -> str: ...

    async def ocpp_replaced(self, message: dict[str, Any]) -> None: ...


_holders: dict[asyncio.AbstractEventLoop, set[Holder]] = {}
_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def holder_watch(holder: Holder) -> None:
    """Check ``holder`` from now on (called once its claim committed); starts this loop's check if needed."""
    loop = asyncio.get_running_loop()
    _holders.setdefault(loop, set()).add(holder)
    task = _tasks.get(loop)
    if task is None or task.done():
        _tasks[loop] = loop.create_task(_check_forever(), name="csms-ownership-check")


def holder_forget(holder: Holder) -> None:
    _holders.get(asyncio.get_running_loop(), set()).discard(holder)


def station_owners_many(jobs: Sequence[tuple[str, ...]]) -> list[dict[str, str]]:
    """Batcher function: for each job (station ids), the channel name each station's row names; one query."""
    wanted = {sid for job in jobs for sid in job}
    owners = dict(Station.objects.filter(station_id__in=wanted).values_list("station_id", "channel_name"))
    return [{sid: owners.get(sid, "") for sid in job} for job in jobs]


async def holders_check() -> int:
    """Close every socket of this loop whose station another connection has claimed; returns how many."""
    holders = [h for h in _holders.get(asyncio.get_running_loop(), ()) if not h.closed]
    if not holders:
        return 0
    owners = await writer_for_loop(station_owners_many).submit(tuple({h.held_station_id for h in holders}))
    replaced = 0
    for holder in holders:
        owner = owners.get(holder.held_station_id, "")
        if owner and owner != holder.channel_name and not holder.closed:
            LOG.warning(
                "%s was taken over by another connection without notice: closing this one", holder.held_station_id
            )
            await holder.ocpp_replaced({"type": "ocpp.replaced"})
            replaced += 1
    return replaced


async def _check_forever() -> None:
    loop = asyncio.get_running_loop()
    while _holders.get(loop):
        await asyncio.sleep(settings.OCPP_OWNERSHIP_CHECK_S)
        try:
            await holders_check()
        except Exception:  # the database is away: the next round tries again
            LOG.warning("ownership check failed", exc_info=True)
    _tasks.pop(loop, None)
