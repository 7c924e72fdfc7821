"""The OCPP-J handshake: the subprotocol offered, HTTP Basic credentials, the TLS client certificate, and the
station's security profile (1, 2 or 3) enforced in batches on the group-commit writer's pattern (one query for every
handshake waiting).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.conf import settings

from chargers import ocpp_j
from chargers.limits import FailureCounter
from chargers.models import BootStatus, CertificateUse, PkiCertificate, SecurityProfile, Station, StationEventKind
from chargers.pki.verify import ClientCert, client_cert_from_scope, client_cert_refusal
from chargers.services.password_rotation import rotation_adopt_on_connect
from chargers.services.security import handshake_refusals_record
from chargers.services.security_events import security_event_later
from chargers.writer import after_batch, writer_for_loop

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


AuthJob = tuple[str, tuple[str, str] | None, dict[str, Any] | None]  # (station id from the URL, Basic, TLS scope)


@dataclass(frozen=True)
class Refused:
    """A refused handshake: the HTTP status to answer (401: not authenticated; 403: authenticated, or presenting a
    certificate, but not allowed this way) and the reason, logged and stored, never sent to the client."""

    status: int
    reason: str


UNAUTHENTICATED = Refused(401, "unknown station or wrong credentials")


class Admitted(NamedTuple):
    """An admitted handshake: the station, its registration status and, for profile 3, the certificate it was
    admitted on (the connection closes when that certificate is revoked or expires: chargers.certificate_sessions)."""

    pk: int
    boot_status: str
    client_cert: ClientCert | None = None


async def station_authenticate(
    station_id: str, credentials: tuple[str, str] | None, tls: dict[str, Any] | None = None
) -> Admitted | Refused:
    """``Admitted`` when the station may connect this way under its security profile; else a ``Refused``.

    Handshakes are batched like writes: when 1,000 stations reconnect at once, one query serves all that are
    waiting, on the batcher's own thread and connection (a per-handshake sync_to_async hop with its health-check
    round trip made a reconnect wave overrun Daphne's handshake timeout).
    """
    outcome: Admitted | Refused = await writer_for_loop(authenticate_many).submit((station_id, credentials, tls))
    return outcome


def authenticate_many(jobs: Sequence[AuthJob]) -> list[Admitted | Refused]:
    """One outcome per handshake, with one query for the stations and one for the client certificates presented.

    The profiles (OCPP 2.0.1 Part 2 A00): 1, Basic auth over ws:// or wss://; 2, Basic auth over TLS; 3, a client
    certificate verified against our CA whose CN is the station id, known to the register, not revoked, not
    expired; a password does not stand in for it. A station is never admitted below its profile.
    """
    certs = [client_cert_from_scope(tls) for _, _, tls in jobs]
    claimed = {
        sid for (sid, creds, _), (cert, _) in zip(jobs, certs, strict=True) if cert or (creds and creds[0] == sid)
    }
    rows = Station.objects.filter(station_id__in=claimed).only(
        "pk", "station_id", "password_hash", "password_pending_hash", "boot_status", "security_profile"
    )
    stations = {s.station_id: s for s in rows} if claimed else {}
    serials = {cert.serial for cert, _ in certs if cert and cert.common_name in stations}
    # Only station certificates open an OCPP socket: not an SECC one (the charger's, towards the car), not a server's.
    station_certs = PkiCertificate.objects.filter(serial__in=serials, use=CertificateUse.STATION)
    registered = (
        {
            serial: (cn, revoked_at is not None)
            for serial, cn, revoked_at in station_certs.values_list("serial", "subject_cn", "revoked_at")
        }
        if serials
        else {}
    )
    now = datetime.now(UTC)
    outcomes: list[Admitted | Refused] = []
    refusals: list[tuple[int, str, int, str]] = []
    for (station_id, credentials, tls), (cert, cert_problem) in zip(jobs, certs, strict=True):
        station = stations.get(station_id)
        if station is None:
            outcomes.append(UNAUTHENTICATED)
            continue
        password_ok = _password_ok(station, credentials)
        outcome = _admit(station, password_ok, tls, cert, cert_problem, now, registered)
        if isinstance(outcome, Refused):
            refusals.append((station.pk, station_id, outcome.status, outcome.reason))
        outcomes.append(outcome)
    if refusals:
        after_batch(handshake_refusals_record, refusals)
    return outcomes


def boot_statuses_many(pks: Sequence[int]) -> list[str]:
    """The registration status of each station (by pk), in one query: connections re-reading theirs in a batch."""
    statuses = dict(Station.objects.filter(pk__in=set(pks)).values_list("pk", "boot_status"))
    return [statuses.get(pk, BootStatus.REJECTED) for pk in pks]  # a station deleted meanwhile: refused


def _password_ok(station: Station, credentials: tuple[str, str] | None) -> bool:
    if credentials is None or credentials[0] != station.station_id:
        return False
    if station.check_password(credentials[1]):
        return True
    if station.check_pending_password(credentials[1]):  # a rotated password, first used: now the only one
        rotation_adopt_on_connect(station)
        return True
    return False


def _admit(
    station: Station,
    password_ok: bool,
    tls: dict[str, Any] | None,
    cert: ClientCert | None,
    cert_problem: str,
    now: datetime,
    registered: dict[str, tuple[str, bool]],
) -> Admitted | Refused:
    admitted = Admitted(station.pk, station.boot_status)
    profile = station.security_profile
    if profile == SecurityProfile.TLS_CLIENT_CERT:
        if cert is None:
            if tls is None:
                # No certificate can be presented over ws://: a password, right or wrong, is a downgrade attempt.
                return Refused(403 if password_ok else 401, "profile 3 requires TLS with a client certificate")
            return Refused(403 if password_ok else 401, f"profile 3 requires a client certificate ({cert_problem})")
        problem = client_cert_refusal(
            station_id=station.station_id, cert=cert, now=now, registered=registered.get(cert.serial)
        )
        return Refused(403, problem) if problem else admitted._replace(client_cert=cert)
    if not password_ok:
        return UNAUTHENTICATED
    if profile == SecurityProfile.TLS_BASIC and tls is None:
        return Refused(403, "profile 2 requires TLS (wss://)")
    return admitted


# --- failed handshakes ------------------------------------------------------------------------------------------
# Counted per station id and per client address in this process (chargers.limits). Past the limit a handshake is
# refused with 429 before its password is checked: guessing costs the server nothing more, and the station's
# legitimate owner is locked out for one window at most. A key's first failure and its being blocked are logged and
# stored as security events; the attempts in between only counted, so a brute force costs no write per attempt.

FAILURES = FailureCounter()


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def handshake_retry_after(station_id: str, address: str) -> int:
    """0 when a handshake may be tried; else the whole seconds until every window blocking this station id or
    address has ended: the ``Retry-After`` of the 429 refusal (RFC 9110 10.2.3), so a well-behaved station waits
    exactly as long as it must instead of hammering, or giving up for longer than needed."""
    window = settings.OCPP_AUTH_FAILURE_WINDOW_S
    blocking = [(f"station:{station_id}", settings.OCPP_AUTH_FAILURES_PER_STATION)]
    if address:
        blocking.append((f"address:{address}", settings.OCPP_AUTH_FAILURES_PER_ADDRESS))
    left = max(
        (FAILURES.seconds_left(key, window_s=window) for key, limit in blocking
         if FAILURES.count(key, window_s=window) >= limit),
        default=0.0,
    )  # fmt: skip
    return math.ceil(left) if left > 0 else 0


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
