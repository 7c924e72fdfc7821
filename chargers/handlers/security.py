"""Security (OCPP block A) and ISO 15118 certificate management (block M).

Security events are recorded. This CSMS runs no PKI, no OCSP/CRL client and no ISO 15118 certificate service,
so it refuses certificate requests, and reports every certificate's revocation status honestly as Unknown.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_iso, datetime_parse
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


def certificate_chain_status_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # No OCSP/CRL client: every certificate's revocation status is honestly Unknown.
    next_update = datetime_iso(ctx.now + timedelta(hours=1))
    return {
        "certificateStatus": [
            {
                "certificateHashData": req["certificateHashData"],
                "source": req["source"],
                "status": "Unknown",
                "nextUpdate": next_update,
            }
            for req in payload["certificateStatusRequests"]
        ]
    }


def certificate_status_refuse(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # GetCertificateStatus: no OCSP client to ask.
    return {"status": "Failed"}


def ev_certificate_refuse(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    # Get15118EVCertificate: no ISO 15118 contract certificate service.
    return {"status": "Failed", "exiResponse": ""}
