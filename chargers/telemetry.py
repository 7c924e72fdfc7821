"""Committed telemetry (meter values, connector statuses, connections): what the CSMS tells the layers above it.

The CSMS knows no fleet, market or dispatch. Apps above it register a receiver (``telemetry_receiver_register``,
from their ``AppConfig.ready``) that gets every batch of ``TelemetryUpdate`` once it is committed; the live feed goes
to the channel-layer group ``TELEMETRY_GROUP``, which the dashboard and the dispatcher join.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from chargers import outage
from chargers.writer import writer_loop

LOG = logging.getLogger(__name__)
#: Channel-layer group committed telemetry is published to (see ``telemetry_committed``); the dashboard joins it.
TELEMETRY_GROUP = "telemetry"


@dataclass(frozen=True, slots=True)
class TelemetryUpdate:
    """One live reading for the dashboard feed and downstream estimators (integer units, UTC timestamp).

    ``kind``: "meter" (``values`` maps measurand[.phase] to its stored integer, in ``units``; readings at the
    outlet, plus the EV's own "SoC" and its pack temperature as "Temperature@EV"), "status" (``status`` is the
    connector status) or "connection" (``status`` is "online"/"offline").
    """

    station_id: str
    kind: str
    timestamp: datetime
    evse_id: int = 0
    values: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    status: str = ""
    transaction_id: str = ""


#: Called with each batch of committed updates; must be quick (enqueue work on commit, do not compute here).
TelemetryReceiver = Callable[[list[TelemetryUpdate]], None]

_receivers: list[TelemetryReceiver] = []


def telemetry_receiver_register(receiver: TelemetryReceiver) -> None:
    """Have ``receiver(updates)`` called by ``telemetry_committed``, after the receivers registered before it.

    Registering the same receiver again changes nothing (an app's ``ready`` may run more than once).
    """
    if receiver not in _receivers:
        _receivers.append(receiver)


def telemetry_receivers() -> tuple[TelemetryReceiver, ...]:
    """The registered receivers, in call order."""
    return tuple(_receivers)


def telemetry_committed(*, updates: list[TelemetryUpdate]) -> None:
    """The one place downstream refreshes hang off committed telemetry (meter values, statuses, connections).

    Runs on the writer thread after the COMMITs that stored ``updates`` and the answers to the stations that sent
    them, with everything committed in the last ``OCPP_TELEMETRY_INTERVAL`` seconds (``after_batch``); keep it
    quick (enqueue Celery work with ``transaction.on_commit`` rather than computing here). Calls every registered
    receiver, then publishes the live feed to the channel-layer group ``telemetry`` as
    ``{"type": "telemetry.update", "updates": [TelemetryUpdate as dict, ...]}``.
    """
    _receivers_notify(updates)
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "telemetry.update", "updates": [_telemetry_dict(u) for u in updates]}
    loop = writer_loop()
    if loop is not None and not loop.is_closed():
        # On the CSMS writer thread: publish from the server's own loop, without waiting and without a new loop.
        future = asyncio.run_coroutine_threadsafe(layer.group_send(TELEMETRY_GROUP, message), loop)
        future.add_done_callback(_publish_done)
        return
    try:
        async_to_sync(layer.group_send)(TELEMETRY_GROUP, message)
    except Exception as exc:  # the live feed is best effort: the data is already committed
        outage.CHANNEL_LAYER.failed(exc)
    else:
        outage.CHANNEL_LAYER.recovered()


def _receivers_notify(updates: list[TelemetryUpdate]) -> None:
    for receiver in _receivers:
        try:
            receiver(updates)
        except Exception:  # stored and acknowledged already: one receiver's failure must not cost the others theirs
            LOG.exception("telemetry receiver %r failed", receiver)


def _publish_done(future: concurrent.futures.Future[None]) -> None:
    """The live feed is best effort (the data is committed): an outage is logged once, not every 0.2 s."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        outage.CHANNEL_LAYER.failed(exc)
    else:
        outage.CHANNEL_LAYER.recovered()


def _telemetry_dict(update: TelemetryUpdate) -> dict[str, Any]:
    # By hand: dataclasses.asdict deep-copies every value, several percent of the CSMS's CPU under load.
    return {
        "station_id": update.station_id,
        "kind": update.kind,
        "timestamp": update.timestamp.isoformat(),
        "evse_id": update.evse_id,
        "values": dict(update.values),
        "units": dict(update.units),
        "status": update.status,
        "transaction_id": update.transaction_id,
    }
