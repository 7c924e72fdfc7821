"""Security (OCPP block A): SecurityEventNotification (SignCertificate is ``chargers.handlers.certificate_signing``'s).

Security events are recorded. The ISO 15118 certificate messages (block M) and contract certificates in Authorize
are ``chargers.handlers.plug_and_charge``'s.
"""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_parse
from chargers.jobs import StationRef
from chargers.models import StationEventKind


def security_event_record(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.event(
        station,
        StationEventKind.SECURITY_EVENT,
        at=datetime_parse(payload["timestamp"], ctx.now),
        summary=payload["type"],
        **payload,
    )
    return {}
