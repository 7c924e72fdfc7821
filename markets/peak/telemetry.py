"""The CSMS's committed telemetry -> site-meter readings. The CSMS knows no depot: it hands every committed batch to
the receivers registered in ``MarketsConfig.ready``; this one picks the power readings of EVSE 0 (a station's main
meter, or a Modbus meter an edge agent reports as EVSE 0) and enqueues their storage. Never raises."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fleet import jobs
from markets.peak.tasks import INGEST_SITE_METER

LOG = logging.getLogger(__name__)


def _site_meter_like(update: Any) -> bool:
    return (
        update.kind == "meter"
        and update.evse_id == 0
        and any(k.startswith(("Power.Active.Import", "Power.Active.Export")) for k in update.values)
    )


def on_telemetry_committed(updates: Iterable[Any]) -> None:
    try:
        readings = [
            {
                "station_id": u.station_id,
                "evse_id": u.evse_id,
                "timestamp": u.timestamp.isoformat(),
                "values": {k: v for k, v in u.values.items() if k.startswith("Power.Active.")},
            }
            for u in updates
            if _site_meter_like(u)
        ]
        if readings:
            # On the CSMS writer thread: never wait on the broker (fleet.jobs says what an outage can lose).
            jobs.task_enqueue_background(name=INGEST_SITE_METER, args=(readings,))
    except Exception:  # stored and acknowledged already: never fail the CSMS from here
        LOG.exception("site meter telemetry hook failed")
