"""What a connection hands the group-commit writer (``chargers.apply.batch_apply``): plain frozen data.

The consumer builds these on the event loop; the writer thread applies them. They hold no model instances, so
they cross threads freely and cost nothing to build per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class StationRef:
    """What a connection knows about its station without reading the database again."""

    pk: int
    station_id: str
    version: str
    tls: bool = False  # the connection came over TLS (wss://, or a trusted proxy's TLS port): SignCertificate needs it


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The answer to an incoming CALL: a CALLRESULT payload, or a CALLERROR code and description."""

    payload: dict[str, Any] | None = None
    error_code: str = ""
    error_description: str = ""
    retransmit: bool = False  # answered from the message log, nothing new stored


@dataclass(frozen=True, slots=True)
class IncomingCall:
    station: StationRef
    message_id: str
    action: str
    payload: dict[str, Any]
    received_at: datetime
    payload_sha256: str = ""  # ocpp_j.payload_digest of the payload as received; computed by the batch if empty
    looked_up: Any = None  # what the consumer fetched from the network for it (chargers.handlers.registry.PREFETCH)


@dataclass(frozen=True, slots=True)
class IncomingSend:
    """OCPP 2.1 SEND (type 6): stored, never answered."""

    station: StationRef
    message_id: str
    action: str
    payload: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A frame recorded as is: CALLERRORs we sent for bad frames, CALLRESULTERRORs, CSMS calls and their answers."""

    station: StationRef
    direction: str
    message_type: int
    message_id: str = ""
    action: str = ""
    payload: Any = None
    raw: str = ""
    response: Any = None
    error_code: str = ""
    error_description: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    responded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Connected:
    station: StationRef
    channel_name: str
    at: datetime
    # A claim for a handshake that was abandoned (its consumer cancelled) must not be applied.
    drop_if_abandoned: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Disconnected:
    station: StationRef
    channel_name: str
    at: datetime
    code: int | None


Job = IncomingCall | IncomingSend | LogEntry | Connected | Disconnected
