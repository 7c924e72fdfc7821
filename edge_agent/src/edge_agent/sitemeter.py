"""The depot's main meter, read by the agent and reported to the CSMS as OCPP MeterValues for EVSE 0.

Every ``interval_s`` the meter (``edge_agent.hardware.sunspec_meter``) is read and one MeterValues message is put in
the station's outbox: ``evseId`` 0 (the station as a whole: OCPP 2.x's place for a grid-connection meter),
``Power.Active.Import`` / ``Power.Active.Export`` (W, the net import split by sign), the energy registers, voltage
and frequency where the meter has them. The outbox is the agent's durable queue: readings taken while the CSMS is
unreachable are sent when the link is back (the CSMS stores them for the bill; real-time dispatch follows only the
present ones). A read that fails or hangs sends nothing (never a zero), is logged once with ``SITE_METER_FAULT``
in the session log, and is retried at the next interval; recovery is logged too. The meter is independent of the
car's inverter: a meter fault never stops charging, and an inverter fault never stops metering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent import sessionlog as slog
from edge_agent.clock import iso
from edge_agent.hardware import HardwareError
from edge_agent.hardware.sunspec_meter import SiteMeterReading
from edge_agent.station import Station

LOG = logging.getLogger(__name__)
SITE_METER_FAULT = "SITE_METER_FAULT"


def meter_values_payload(reading: SiteMeterReading, ts: str) -> dict[str, Any]:
    """MeterValues for EVSE 0 (camelCase, as the outbox sends it), whole W and Wh, 0.1 V, mHz."""

    def sv(value: float, measurand: str, unit: str, places: int = 0) -> dict[str, Any]:
        return {"value": round(value) if places == 0 else round(value, places), "measurand": measurand,
                "unitOfMeasure": {"unit": unit}}  # fmt: skip

    w = reading.import_w
    values = [
        sv(max(w, 0.0), "Power.Active.Import", "W"),
        sv(max(-w, 0.0), "Power.Active.Export", "W"),
        sv(reading.energy_import_wh, "Energy.Active.Import.Register", "Wh"),
        sv(reading.energy_export_wh, "Energy.Active.Export.Register", "Wh"),
    ]
    if reading.voltage_v is not None:
        values.append(sv(reading.voltage_v, "Voltage", "V", 1))
    if reading.frequency_hz is not None:
        values.append(sv(reading.frequency_hz, "Frequency", "Hz", 3))
    return {"evseId": 0, "meterValue": [{"timestamp": ts, "sampledValue": values}]}


class SiteMeterReporter:
    """Reads ``read`` every ``interval_s`` and queues the reading on ``station``'s outbox."""

    def __init__(
        self,
        station: Station,
        read: Callable[[], Awaitable[SiteMeterReading]],
        *,
        interval_s: float = 5.0,
        io_timeout_s: float = 1.0,
    ) -> None:
        self.station = station
        self.read = read
        self.interval_s = interval_s
        self.io_timeout_s = io_timeout_s
        self.faulted = False
        self.sent = 0

    async def once(self) -> bool:
        """One reading, queued; False (nothing queued) if the meter failed."""
        try:
            async with asyncio.timeout(self.io_timeout_s):
                reading = await self.read()
        except (HardwareError, TimeoutError, OSError) as exc:
            if not self.faulted:
                LOG.warning("%s: site meter read failed: %s", self.station.id, exc or type(exc).__name__)
                slog.log_event(self.station.id, "site_meter", code=SITE_METER_FAULT, level=logging.WARNING,
                               error=str(exc) or type(exc).__name__)  # fmt: skip
            self.faulted = True
            return False
        if self.faulted:
            LOG.warning("%s: site meter reads again", self.station.id)
            slog.log_event(self.station.id, "site_meter_recovered")
        self.faulted = False
        payload = meter_values_payload(reading, iso(self.station.clock.wall()))
        self.station.outbox.put("MeterValues", payload, offline=not self.station.link.connected)
        self.sent += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            await self.once()
            next_at = max(next_at + self.interval_s, loop.time())  # a fixed grid; a slow read skips, never bunches
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_at - loop.time())
