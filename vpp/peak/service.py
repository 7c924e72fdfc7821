"""Peak shaving in a server process: site-meter readings from the CSMS's committed telemetry drive one
:class:`~vpp.peak.shaver.SiteShaver` per site.

**Where it runs.** In the Daphne process whose socket received the site meter's MeterValues: the telemetry hook
(``on_telemetry_committed``, registered in ``VppConfig.ready``) runs there on the CSMS writer thread and hands the
readings to the server's event loop, where the shaver allocates and fans the commands out to the cars wherever
their sockets are (``chargers.fanout``). No database on that path: a background task reloads the site meters, the
caps in force and the cars every ``refresh_s`` on a thread of its own, where each decision that sent commands is
also stored (:class:`vpp.models.PeakStep`, written by ``vpp.peak.services.peak_step_record``).

**Faults.** A reload that fails keeps the previous state, but a shaver whose state is older than
``max_state_age_s`` asks nothing of the cars (and the profiles it sent lapse by their ``validTo``); a failed
fan-out is logged, the next reading tries again. A site-meter reading older than ``max_reading_age_s`` when it
arrives (an edge agent replaying what it buffered during an outage, a station's clock adrift) drives nothing: it is
stored by ``markets`` for the bill, but the cars follow only the present load. When the readings stop, nothing is
sent, and the profiles already sent lapse by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from django.db import close_old_connections

from chargers.fanout import NodeListener
from chargers.writer import writer_loop
from markets.peak.services import net_import_w
from vpp.peak.selectors import site_meters, site_state_load
from vpp.peak.services import peak_step_record
from vpp.peak.shaver import ShaveStep, SiteShaver

LOG = logging.getLogger(__name__)
REFRESH_S = 5.0
MAX_READING_AGE_S = 30.0  # a site meter reports every few seconds; older than this is history, not the load now
MAX_STATE_AGE_S = 120.0


class PeakShaving:
    """This process's shavers, fed from the telemetry hook. ``feed`` runs on the event loop."""

    def __init__(
        self,
        *,
        refresh_s: float = REFRESH_S,
        max_reading_age_s: float = MAX_READING_AGE_S,
        max_state_age_s: float = MAX_STATE_AGE_S,
    ) -> None:
        self.refresh_s = refresh_s
        self.max_reading_age_s = max_reading_age_s
        self.max_state_age_s = max_state_age_s
        self._late: set[int] = set()  # sites whose readings come late (logged when it starts and when it ends)
        self.meters: dict[tuple[str, int], int] = {}
        self.shavers: dict[int, SiteShaver] = {}
        self._busy: set[int] = set()
        self._pending: dict[int, tuple[int, float]] = {}  # newest reading that came while a step was under way
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peak-db")
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="peak-refresh")

    async def _refresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                meters, states = await loop.run_in_executor(self._db, self._load, time.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self._failing:
                    LOG.exception("peak shaving: state reload failed; keeping the previous state")
                self._failing = True
            else:
                if self._failing:
                    LOG.warning("peak shaving: state reload works again")
                self._failing = False
                self.meters = meters
                for site_id, state in states.items():
                    shaver = self.shavers.get(site_id)
                    if shaver is None:
                        shaver = SiteShaver(
                            site_id=site_id, max_state_age_s=self.max_state_age_s, recorder=self._record
                        )
                        self.shavers[site_id] = shaver
                    shaver.install(state)
            await asyncio.sleep(self.refresh_s)

    @staticmethod
    def _load(now: float) -> tuple[dict[tuple[str, int], int], dict[int, Any]]:
        close_old_connections()
        try:
            meters = site_meters()
            return meters, {site_id: site_state_load(site_id=site_id, now=now) for site_id in set(meters.values())}
        finally:
            close_old_connections()

    def _record(self, site_id: int, step: ShaveStep) -> None:
        """Hand a step that sent commands to the database thread (the event loop never waits for the database)."""
        try:
            self._db.submit(self._write, site_id, step)
        except RuntimeError:  # stopped while a step was under way
            LOG.error("peak shaving: stopped; site %s's step at %.0f was not recorded", site_id, step.at)

    @staticmethod
    def _write(site_id: int, step: ShaveStep) -> None:
        close_old_connections()
        try:
            peak_step_record(site_id=site_id, step=step, node=NodeListener.node_id)
        except Exception:  # a failed record must not stop shaving; the log says what was lost
            LOG.exception("peak shaving: recording site %s's step failed", site_id)
        finally:
            close_old_connections()

    def feed(self, updates: Iterable[dict[str, Any]]) -> None:
        self.start()
        for u in updates:
            w = net_import_w(u["values"])
            if w is None:
                continue
            at = datetime.fromisoformat(u["timestamp"]).timestamp()
            key = (u["station_id"], u["evse_id"])
            site_id = self.meters.get(key)
            if site_id is not None:
                if self._in_time(site_id, at):
                    self._reading(site_id, w, at)
                continue
            for shaver in self.shavers.values():  # a car's reading: its power counts toward the site's fleet
                shaver.car_power(key[0], key[1], at, w)

    def _in_time(self, site_id: int, at: float) -> bool:
        age = time.time() - at
        if age <= self.max_reading_age_s:
            if site_id in self._late:
                LOG.warning("peak shaving: site %s readings are current again", site_id)
                self._late.discard(site_id)
            return True
        if site_id not in self._late:
            LOG.warning(
                "peak shaving: site %s reading %.0f s old when it arrived; the cars are asked nothing on it",
                site_id,
                age,
            )
            self._late.add(site_id)
        return False

    def _reading(self, site_id: int, import_w: int, at: float) -> None:
        shaver = self.shavers.get(site_id)
        if shaver is None:
            return
        if site_id in self._busy:  # one step at a time per site; the newest reading waits for the next
            self._pending[site_id] = (import_w, at)
            return
        self._busy.add(site_id)
        asyncio.get_running_loop().create_task(self._run(shaver, import_w))

    async def _run(self, shaver: SiteShaver, import_w: int) -> None:
        try:
            while True:
                try:
                    await shaver.step(import_w=import_w)
                except Exception:
                    LOG.exception("peak shaving: site %s step failed", shaver.site_id)
                pending = self._pending.pop(shaver.site_id, None)
                if pending is None:
                    return
                import_w = pending[0]
        finally:
            self._busy.discard(shaver.site_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._db.shutdown(wait=False)


PEAK = PeakShaving()


def on_telemetry_committed(updates: Iterable[Any]) -> None:
    """CSMS hook (writer thread): hand every power reading to the server loop's :data:`PEAK`. Never raises."""
    try:
        loop = writer_loop()
        if loop is None or loop.is_closed():
            return  # not in a server process (a Celery worker, a test's direct call): nothing to dispatch from here
        power = [
            {"station_id": u.station_id, "evse_id": u.evse_id, "timestamp": u.timestamp.isoformat(), "values": u.values}
            for u in updates
            if u.kind == "meter" and any(k.startswith("Power.Active.") for k in u.values)
        ]
        if power:
            loop.call_soon_threadsafe(PEAK.feed, power)
    except Exception:
        LOG.exception("peak shaving telemetry hook failed")
