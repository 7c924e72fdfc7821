"""Security events the CSMS itself records (refused handshakes), next to those stations report."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from chargers.models import StationEvent, StationEventKind

LOG = logging.getLogger("chargers.security")


def handshake_refusals_record(refusals: list[tuple[int, str, int, str]]) -> None:
    """Log and store each refused handshake of a known station (pk, station id, HTTP status, reason) as a
    SecurityEvent.

    Runs after the handshake batch (``after_batch``): the refused station has its answer already, and a failed
    insert is logged by the writer, never turned into an admission.
    """
    now = datetime.now(UTC)
    for _, station_id, status, reason in refusals:
        LOG.warning("refused %s's connection (%d): %s", station_id, status, reason)
    StationEvent.objects.bulk_create(
        StationEvent(
            station_id=pk,
            kind=StationEventKind.SECURITY_EVENT,
            timestamp=now,
            received_at=now,
            summary=f"HandshakeRefused: {reason}"[:255],
            data={"type": "HandshakeRefused", "status": status, "reason": reason},
        )
        for pk, _, status, reason in refusals
    )
