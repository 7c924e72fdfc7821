"""Shared timers: one task ticks every station it owns, in one group-committed batch per tick.

Used by ``edge-agent run`` (one station, real or simulated hardware) and by the fleet simulator (thousands of
stations in one process). Ticks are scheduled on a fixed grid (no drift); a late tick is not made up twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from edge_agent.buffer import OutboxStore
from edge_agent.station import Station

LOG = logging.getLogger("edge_agent.runner")


async def tick_forever(
    stations: Sequence[Station],
    store: OutboxStore,
    tick_s: float,
    *,
    stop: asyncio.Event,
    before_tick: Callable[[float], None] | None = None,
) -> int:
    """Tick all ``stations`` every ``tick_s`` until ``stop`` is set; return the number of ticks run."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    ticks = 0
    # Disk writes leave the loop: the writer task group-commits in a thread while the stations keep ticking.
    writer = None if store.writer_running else store.start_writer()
    try:
        ticks = await _loop(stations, store, tick_s, stop, before_tick, loop, next_at)
        if writer is not None:
            await store.drain()  # a clean stop writes everything out; a cancellation (crash) does not
    finally:
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
    return ticks


async def _loop(
    stations: Sequence[Station],
    store: OutboxStore,
    tick_s: float,
    stop: asyncio.Event,
    before_tick: Callable[[float], None] | None,
    loop: asyncio.AbstractEventLoop,
    next_at: float,
) -> int:
    ticks = 0
    while not stop.is_set():
        if before_tick is not None:
            before_tick(loop.time())
        with store.batch():
            for st in stations:
                try:
                    await st.tick()
                except Exception as exc:  # one faulty station must not stop the other stations' loops
                    LOG.exception("%s: tick failed", st.id)
                    # A tick that did not finish delivered no fresh command: stop as for a hardware fault.
                    with contextlib.suppress(Exception):
                        await st.fault(st.clock.monotonic(), "tick", exc)
        ticks += 1
        next_at += tick_s
        delay = next_at - loop.time()
        if delay < 0:  # overrun: skip the missed slots instead of bursting
            next_at = loop.time()
            delay = 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return ticks
