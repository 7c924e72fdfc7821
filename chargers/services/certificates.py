"""Station certificates from the built-in PKI (OCPP 2.0.1 A02/A03): issuing what a SignCertificate asked for,
delivering it with CertificateSigned, and asking stations to renew before their certificate expires.

The station's SignCertificate is answered in its batch (``chargers.handlers.certificate_signing``), which stores the
accepted request. Only after that batch's COMMIT, and after the station has its CALLRESULT, does the writer hand the
request to ``certificate_signings_start``: on the server's own loop the request is claimed (a committed UPDATE), the
certificate signed on a small executor of its own (``PKI_EXECUTOR``: outside any transaction and off Channels' shared
sync thread, so a slow HSM holds neither a row lock nor other consumers' database calls), recorded (``PkiCertificate``,
so the profile-3 handshake knows it) in a second short transaction, and only then sent. A delivery that
could not happen then (station offline, no answer, a process restart) is picked up by the periodic
``certificate_signings_sweep``. Every CertificateSigned and every renewal TriggerMessage goes through
``station_call`` and is audited under ``system:pki``.

Idempotent: a request is claimed (``claimed_until``) before each attempt, issued once, and delivered until the
station answers or ``DELIVERY_ATTEMPTS``/``DELIVERY_WINDOW`` run out. A station answering Rejected gets a security
event, and the certificate it refused is revoked (the register holds no certificate nobody uses).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from cryptography import x509
from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from chargers.models import (
    CertificateSigning,
    CertificateUse,
    PkiCertificate,
    Station,
    StationCommand,
    StationEventKind,
)
from chargers.pki import issue
from chargers.pki.storage import PkiError
from chargers.services.security_events import security_event_record
from chargers.services.station_call import StationCallError, station_call, station_call_async
from chargers.writer import writer_loop

LOG = logging.getLogger("chargers.security")

ACTOR = "system:pki"
DELIVERY_ATTEMPTS = 5
DELIVERY_WINDOW = timedelta(days=1)  # then the station has long asked again (OCPP CertSigningRepeatTimes)
SWEEP_GRACE = timedelta(seconds=30)  # the sweep leaves a fresh request to the server that answered it
RENEW_TRIGGER = {"requestedMessage": "SignChargingStationCertificate"}
RENEW_EVERY = timedelta(days=1)

Status = CertificateSigning.Status


# --- the station's owner (fleet knows it; the CSMS does not) ----------------------------------------------------

OwnerResolver = Callable[[int], str]
_owner_resolvers: list[OwnerResolver] = []


def station_owner_resolver_register(resolver: OwnerResolver) -> None:
    """``resolver(station pk)`` names the station's owning organisation ("" when none): the O of its certificate.

    The CSMS knows no organisations: ``fleet`` registers one at start. Registering the same one again changes nothing.
    """
    if resolver not in _owner_resolvers:
        _owner_resolvers.append(resolver)


def station_owner_name(station_pk: int) -> str:
    for resolver in _owner_resolvers:
        name = resolver(station_pk)
        if name:
            return name
    return ""


# --- issuance and delivery ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    signing_id: int
    station_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """A request claimed for one delivery attempt (committed): its delivery, or what is needed to issue it first."""

    signing_id: int
    station_id: str
    delivery: Delivery | None  # None: not issued yet
    csr: str = ""
    organisation: str = ""


# Signing may wait on a slow HSM: it runs here, never on Channels' one shared sync thread (which also stores
# station_call audits, regulation signals and dashboard reads) and never inside a transaction holding a row lock.
PKI_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="pki-sign")
_running: set[concurrent.futures.Future[str]] = set()  # strong references until done


def certificate_signings_start(signing_ids: list[int]) -> None:
    """After the batch that accepted them committed (``after_batch``, on the writer thread): issue and deliver each
    on the server's loop, without holding the writer. Off a writer thread (no loop), the sweep delivers them."""
    loop = writer_loop()
    if loop is None or loop.is_closed():
        return
    for signing_id in signing_ids:
        future = asyncio.run_coroutine_threadsafe(certificate_signing_complete_async(signing_id=signing_id), loop)
        _running.add(future)
        future.add_done_callback(_done)


def _done(future: concurrent.futures.Future[str]) -> None:
    _running.discard(future)
    if not future.cancelled() and future.exception() is not None:
        LOG.error("certificate delivery failed", exc_info=future.exception())


async def certificate_signing_complete_async(*, signing_id: int) -> str:
    """Issue (once) and deliver one accepted request; returns its status afterwards.

    Three steps, none holding a lock across the next: claim (committed), sign on ``PKI_EXECUTOR``, record and send.
    """
    claim = await database_sync_to_async(delivery_claim)(signing_id=signing_id)
    if claim is None:
        return await database_sync_to_async(_status)(signing_id)
    delivery = claim.delivery
    if delivery is None:
        try:
            cert = await asyncio.get_running_loop().run_in_executor(PKI_EXECUTOR, delivery_sign, claim)
        except PkiError as exc:
            return await database_sync_to_async(delivery_not_issued)(claim=claim, error=exc)
        delivery = await database_sync_to_async(delivery_issued)(claim=claim, cert=cert)
        if delivery is None:
            return await database_sync_to_async(_status)(signing_id)
    try:
        answer = await station_call_async(
            station_id=delivery.station_id,
            action="CertificateSigned",
            payload=delivery.payload,
            actor_user_id=None,
            actor_label=ACTOR,
        )
    except StationCallError as exc:
        return await database_sync_to_async(delivery_failed)(signing_id=signing_id, error=exc)
    return await database_sync_to_async(delivery_answered)(signing_id=signing_id, answer=answer)


def certificate_signing_complete(*, signing_id: int) -> str:
    """The synchronous twin of ``certificate_signing_complete_async`` (the periodic sweep, commands): the same three
    steps on the caller's thread, which is not the server's shared one."""
    claim = delivery_claim(signing_id=signing_id)
    if claim is None:
        return _status(signing_id)
    delivery = claim.delivery
    if delivery is None:
        try:
            cert = delivery_sign(claim)
        except PkiError as exc:
            return delivery_not_issued(claim=claim, error=exc)
        delivery = delivery_issued(claim=claim, cert=cert)
        if delivery is None:
            return _status(signing_id)
    try:
        answer = station_call(
            station_id=delivery.station_id,
            action="CertificateSigned",
            payload=delivery.payload,
            actor_user_id=None,
            actor_label=ACTOR,
        )
    except StationCallError as exc:
        return delivery_failed(signing_id=signing_id, error=exc)
    return delivery_answered(signing_id=signing_id, answer=answer)


def _status(signing_id: int) -> str:
    return CertificateSigning.objects.filter(pk=signing_id).values_list("status", flat=True).first() or ""


def delivery_claim(*, signing_id: int) -> Claim | None:
    """Claim the request for one delivery attempt: one conditional UPDATE, committed before anything is signed.

    None when there is nothing to send now: delivered or refused already, another attempt holds it, or it ran out of
    attempts or time (then marked failed). A claim lasts a call's timeout and a margin; the attempt releases it.
    """
    now = timezone.now()
    claimable = CertificateSigning.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lte=now),
        pk=signing_id,
        status__in=(Status.ACCEPTED, Status.ISSUED),
    )
    claimed = claimable.filter(attempts__lt=DELIVERY_ATTEMPTS, received_at__gte=now - DELIVERY_WINDOW).update(
        attempts=F("attempts") + 1, claimed_until=now + timedelta(seconds=settings.OCPP_CALL_TIMEOUT + 30)
    )
    if not claimed:
        if claimable.update(status=Status.FAILED):  # claimable, but out of attempts or time
            CertificateSigning.objects.filter(pk=signing_id, reason="").update(reason="not delivered in time")
            LOG.warning("gave up delivering a certificate (request %d)", signing_id)
        return None
    row = CertificateSigning.objects.select_related("station").get(pk=signing_id)
    station_id = row.station.station_id
    if row.status == Status.ISSUED:
        return Claim(row.pk, station_id, _delivery(row))
    return Claim(row.pk, station_id, None, csr=row.csr, organisation=station_owner_name(row.station.pk))


def delivery_sign(claim: Claim) -> x509.Certificate:
    """Sign the claimed request's certificate. No database and no transaction: see ``PKI_EXECUTOR``."""
    csr = x509.load_pem_x509_csr(claim.csr.encode())  # checked when the request was accepted
    public_key = csr.public_key()
    if not isinstance(public_key, issue.StationPublicKey):  # the acceptance checked the key type
        raise PkiError(f"cannot certify a {type(public_key).__name__}")
    return issue.station_certificate_sign(
        station_id=claim.station_id, public_key=public_key, organisation=claim.organisation
    )


def delivery_issued(*, claim: Claim, cert: x509.Certificate) -> Delivery | None:
    """Record the signed certificate (register and request, one short transaction): durable before it is sent.

    Another attempt may have issued one meanwhile (a claim that lapsed while a token was slow): that one is sent and
    this one, never recorded, is unusable (the profile-3 handshake refuses a certificate the register does not know).
    """
    with transaction.atomic():
        row = (
            CertificateSigning.objects.select_for_update(of=("self",))
            .select_related("station")
            .get(pk=claim.signing_id)
        )
        if row.status != Status.ACCEPTED:
            return _delivery(row) if row.status == Status.ISSUED else None
        record = issue.station_certificate_record(cert=cert, station=row.station)
        row.certificate = record
        row.certificate_chain = issue.chain_pem(cert)
        row.status = Status.ISSUED
        row.save(update_fields=["certificate", "certificate_chain", "status"])
    LOG.info("issued certificate %s to %s", record.serial, row.station.station_id)
    return _delivery(row)


def delivery_not_issued(*, claim: Claim, error: PkiError) -> str:
    """The CA could not sign (gone since the request was accepted, a token error): the request fails."""
    CertificateSigning.objects.filter(pk=claim.signing_id, status=Status.ACCEPTED).update(
        status=Status.FAILED, reason=f"not issued: {error}"[:255], claimed_until=None
    )
    LOG.error("could not issue %s's certificate: %s", claim.station_id, error)
    return _status(claim.signing_id)


def _delivery(row: CertificateSigning) -> Delivery:
    payload: dict[str, Any] = {"certificateChain": row.certificate_chain}
    if row.certificate_type:
        payload["certificateType"] = row.certificate_type
    if row.request_id is not None and row.station.ocpp_version == "2.1":  # 2.1 correlates the two messages
        payload["requestId"] = row.request_id
    return Delivery(row.pk, row.station.station_id, payload)


def delivery_answered(*, signing_id: int, answer: dict[str, Any]) -> str:
    """Record the station's CertificateSigned answer; a Rejected one is a security event and revokes the certificate."""
    with transaction.atomic():
        row = (
            CertificateSigning.objects.select_for_update(of=("self",))
            .select_related("station", "certificate")
            .get(pk=signing_id)
        )
        accepted = answer.get("status") == "Accepted"
        row.status = Status.DELIVERED if accepted else Status.STATION_REJECTED
        row.answer, row.delivered_at, row.claimed_until = answer, timezone.now(), None
        row.save(update_fields=["status", "answer", "delivered_at", "claimed_until"])
    if accepted:
        return row.status
    serial = row.certificate.serial if row.certificate else ""
    reason = (answer.get("statusInfo") or {}).get("reasonCode", "")
    LOG.warning("%s rejected the certificate %s it asked for (%s)", row.station.station_id, serial, reason or "-")
    security_event_record(
        kind=StationEventKind.CERTIFICATE_REJECTED,
        station_ident=row.station.station_id,
        summary=f"CertificateSigned Rejected by the station (certificate {serial})",
        data={"type": "CertificateRejected", "serial": serial, "answer": answer, "signing": row.pk},
    )
    if serial:
        issue.certificate_revoke(serial=serial, reason="rejected by the station")
    return row.status


def delivery_failed(*, signing_id: int, error: StationCallError) -> str:
    """No answer (offline, timeout, CALLERROR): release the claim for the next attempt, or give up after the last."""
    with transaction.atomic():
        row = CertificateSigning.objects.select_for_update(of=("self",)).select_related("station").get(pk=signing_id)
        row.claimed_until = None
        row.reason = f"{type(error).__name__}: {error}"[:255]
        if row.attempts >= DELIVERY_ATTEMPTS:
            row.status = Status.FAILED
        row.save(update_fields=["claimed_until", "reason", "status"])
    LOG.info("CertificateSigned to %s not delivered (%s)", row.station.station_id, row.reason)
    return row.status


def certificate_signings_sweep(*, now: datetime | None = None) -> int:
    """Deliver what the answering server could not (offline then, restarted, no answer): accepted or issued
    requests of online stations older than ``SWEEP_GRACE`` whose claim has lapsed. Returns how many were tried."""
    now = now or timezone.now()
    pending = CertificateSigning.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        status__in=(Status.ACCEPTED, Status.ISSUED),
        received_at__lt=now - SWEEP_GRACE,
    )
    stale = pending.filter(Q(received_at__lt=now - DELIVERY_WINDOW) | Q(attempts__gte=DELIVERY_ATTEMPTS))
    stale.update(status=Status.FAILED, reason="not delivered in time")
    ids = list(pending.exclude(station__channel_name="").values_list("pk", flat=True)[:100])
    for signing_id in ids:
        certificate_signing_complete(signing_id=signing_id)
    return len(ids)


# --- raising a station to profile 3 ---------------------------------------------------------------------------


def station_certificates_revoke_insecure(*, station_ids: Sequence[str], actor: str) -> int:
    """Revoke the certificates these stations got from SignCertificate requests that did not come over TLS.

    Called when stations are raised to security profile 3, where a certificate alone opens the station's socket:
    whoever read the Basic-auth password on a plain ws:// connection could have sent their own CSR then. A station
    that asked over TLS keeps its certificate; certificates an operator issued (``pki station-cert``) are kept.
    Returns how many were revoked (each logged and stored as a security event by ``certificate_revoke``).
    """
    serials = list(
        PkiCertificate.objects.filter(
            use=CertificateUse.STATION,
            revoked_at__isnull=True,
            station__station_id__in=station_ids,
            signings__over_tls=False,
        )
        .values_list("serial", flat=True)
        .distinct()
    )
    if not serials:
        return 0
    return issue.certificate_revoke(serials=serials, reason="CSR came over plain ws://", actor=actor)


# --- renewal --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenewalAsked:
    station_id: str
    expires: datetime
    outcome: str  # the station's TriggerMessage status, or the call's failure


def station_certificates_renew(*, now: datetime | None = None) -> list[RenewalAsked]:
    """Ask each connected station whose current certificate expires within ``PKI_RENEW_BEFORE_DAYS`` to send a new
    CSR (TriggerMessage SignChargingStationCertificate, OCPP 2.0.1 A02 use case "by request of the CSMS").

    "Current": its latest-expiring unrevoked station certificate from this PKI, so a station renewed already is left
    alone. At most once a day per station whatever the outcome: the audit trail (``StationCommand``) is the record.
    """
    now = now or timezone.now()
    horizon = now + timedelta(days=settings.PKI_RENEW_BEFORE_DAYS)
    valid = Q(certificates__use=CertificateUse.STATION, certificates__revoked_at__isnull=True)
    asked_recently = StationCommand.objects.filter(
        station__isnull=False,  # NOT IN over a NULL would exclude every station
        action="TriggerMessage",
        payload__requestedMessage=RENEW_TRIGGER["requestedMessage"],
        requested_at__gte=now - RENEW_EVERY,
    ).values("station_id")
    due = (
        Station.objects.exclude(channel_name="")
        .annotate(expires=Max("certificates__not_after", filter=valid))
        .filter(expires__lte=horizon)
        .exclude(pk__in=asked_recently)
        .values_list("station_id", "expires")
    )
    asked = []
    for station_id, expires in due:
        try:
            answer = station_call(
                station_id=station_id,
                action="TriggerMessage",
                payload=dict(RENEW_TRIGGER),
                actor_user_id=None,
                actor_label=ACTOR,
            )
            outcome = str(answer.get("status", ""))
        except StationCallError as exc:
            outcome = type(exc).__name__
        LOG.info("asked %s to renew its certificate (expires %s): %s", station_id, expires, outcome)
        asked.append(RenewalAsked(station_id, expires, outcome))
    return asked
