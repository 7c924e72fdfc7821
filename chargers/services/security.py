"""Security events the CSMS itself records (refused handshakes), next to those stations report."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from chargers.models import StationEvent, StationEventKind

if TYPE_CHECKING:
    from chargers.handshake import Refused

LOG = logging.getLogger("chargers.security")


def handshake_refusals_record(refusals: list[tuple[int, str, Refused]]) -> None:
    """Log and store each refused handshake of a known station (pk, station id, refusal) as a SecurityEvent.

    Runs after the handshake batch (``after_batch``): the refused station has its answer already, and a failed
    insert is logged by the writer, never turned into an admission.
    """
    now = datetime.now(UTC)
    for _, station_id, refusal in refusals:
        LOG.warning("refused %s's connection (%d): %s", station_id, refusal.status, refusal.reason)
    StationEvent.objects.bulk_create(
        StationEvent(
            station_id=pk,
            kind=StationEventKind.SECURITY_EVENT,
            timestamp=now,
            received_at=now,
            summary=f"HandshakeRefused: {refusal.reason}"[:255],
            data={"type": "HandshakeRefused", "status": refusal.status, "reason": refusal.reason},
        )
        for pk, _, refusal in refusals
    )
