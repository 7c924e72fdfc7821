"""The OCPP-J handshake (security profile 1): the subprotocol offered, HTTP Basic credentials, and the station's
password checked in batches on the group-commit writer's pattern (one query for every handshake waiting).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from chargers import ocpp_j
from chargers.limits import FailureCounter
from chargers.models import Station, StationEventKind
from chargers.services.password_rotation import rotation_adopt_on_connect
from chargers.services.security_events import security_event_later
from chargers.writer import writer_for_loop

LOG = logging.getLogger(__name__)


def subprotocol_negotiate(offered: list[str]) -> str | None:
    for subprotocol, version in ocpp_j.SUBPROTOCOLS.items():
        if subprotocol in offered:
            return version
    return None


def basic_credentials(scope: dict[str, Any]) -> tuple[str, str] | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, encoded = value.partition(b" ")
            if scheme.lower() != b"basic":
                return None
            try:
                user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return (user, password) if sep else None
    return None


AuthJob = tuple[str, tuple[str, str] | None]  # (station id from the URL, Basic credentials)


async def station_authenticate(station_id: str, credentials: tuple[str, str] | None) -> tuple[int, str] | None:
    """(pk, boot status) when the Basic credentials name this station and its password matches; else None.

    Handshakes are batched like writes: when 1,000 stations reconnect at once, one query serves all that are
    waiting, on the batcher's own thread and connection (a per-handshake sync_to_async hop with its health-check
    round trip made a reconnect wave overrun Daphne's handshake timeout).
    """
    return await writer_for_loop(authenticate_many).submit((station_id, credentials))


def authenticate_many(jobs: Sequence[AuthJob]) -> list[tuple[int, str] | None]:
    """One outcome per (station id, credentials), with a single query for the whole batch."""
    claimed = {sid for sid, creds in jobs if creds is not None and creds[0] == sid}
    rows = Station.objects.filter(station_id__in=claimed).only(
        "pk", "station_id", "password_hash", "password_pending_hash", "boot_status"
    )
    stations = {s.station_id: s for s in rows} if claimed else {}
    outcomes: list[tuple[int, str] | None] = []
    for station_id, credentials in jobs:
        station = stations.get(station_id) if credentials is not None and credentials[0] == station_id else None
        if station is None or credentials is None:
            outcomes.append(None)
        elif station.check_password(credentials[1]):
            outcomes.append((station.pk, station.boot_status))
        elif station.check_pending_password(credentials[1]):  # a rotated password, first used: now the only one
            rotation_adopt_on_connect(station)
            outcomes.append((station.pk, station.boot_status))
        else:
            outcomes.append(None)
    return outcomes


# --- failed handshakes ------------------------------------------------------------------------------------------
# Counted per station id and per client address in this process (chargers.limits). Past the limit a handshake is
# refused with 429 before its password is checked: guessing costs the server nothing more, and the station's
# legitimate owner is locked out for one window at most. A key's first failure and its being blocked are logged and
# stored as security events; the attempts in between only counted, so a brute force costs no write per attempt.

FAILURES = FailureCounter()


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def handshake_blocked(station_id: str, address: str) -> bool:
    """True when this station id or address has failed too often in the current window (refuse with 429)."""
    window = settings.OCPP_AUTH_FAILURE_WINDOW_S
    return FAILURES.count(f"station:{station_id}", window_s=window) >= settings.OCPP_AUTH_FAILURES_PER_STATION or (
        bool(address)
        and FAILURES.count(f"address:{address}", window_s=window) >= settings.OCPP_AUTH_FAILURES_PER_ADDRESS
    )


def handshake_failed(station_id: str, address: str, *, reason: str) -> None:
    """Count a refused handshake (wrong or missing credentials) against the station id and the address."""
    window = settings.OCPP_AUTH_FAILURE_WINDOW_S
    for key, limit in (
        (f"station:{station_id}", settings.OCPP_AUTH_FAILURES_PER_STATION),
        (f"address:{address}", settings.OCPP_AUTH_FAILURES_PER_ADDRESS),
    ):
        if key == "address:":
            continue
        failures = FAILURES.failed(key, window_s=window)
        if failures == 1:
            LOG.warning("OCPP handshake refused for %s from %s: %s", station_id, address or "?", reason)
            summary = f"handshake refused from {address or '?'}: {reason}"
        elif failures == limit:
            LOG.warning(
                "OCPP handshakes of %s blocked for %g s: %d failures (last: %s from %s)",
                key, window, failures, station_id, address or "?",
            )  # fmt: skip
            summary = f"{key} blocked for {window:g} s after {failures} failed handshakes"
        else:
            continue
        data = {"reason": reason, "failures": failures, "key": key}
        security_event_later(
            kind=StationEventKind.AUTH_FAILED, station_ident=station_id, address=address, summary=summary, data=data
        )
