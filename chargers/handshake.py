"""The OCPP-J handshake (security profile 1): the subprotocol offered, HTTP Basic credentials, and the station's
password checked in batches on the group-commit writer's pattern (one query for every handshake waiting).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from chargers import ocpp_j
from chargers.models import Station
from chargers.writer import writer_for_loop


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
    rows = Station.objects.filter(station_id__in=claimed).only("pk", "station_id", "password_hash", "boot_status")
    stations = {s.station_id: s for s in rows} if claimed else {}
    outcomes: list[tuple[int, str] | None] = []
    for station_id, credentials in jobs:
        station = stations.get(station_id) if credentials is not None and credentials[0] == station_id else None
        if station is None or credentials is None or not station.check_password(credentials[1]):
            outcomes.append(None)
        else:
            outcomes.append((station.pk, station.boot_status))
    return outcomes
