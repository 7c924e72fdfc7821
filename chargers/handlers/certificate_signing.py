"""SignCertificate (OCPP 2.0.1 A02/A03, 2.1): the station asks the CSMS's PKI to certify a key it generated.

Answered in the station's batch: the CSR is checked (``chargers.pki.csr``), the request stored, and Accepted or
Rejected with a ``statusInfo.reasonCode``. Nothing is signed here, inside the writer's transaction: once the batch
has committed and the station has its CALLRESULT, ``chargers.services.certificates`` issues the certificate and
sends CertificateSigned (OCPP: the certificate follows the SignCertificateResponse).

Refused, each stored as a ``CsrRefused`` security event: a request that did not come over TLS from a station of
security profile 2 or 3 (``InsecureConnection``: over plain ws:// anyone on the path reads the Basic-auth password,
could send their own CSR and get a certificate that opens the station's profile-3 socket later; and a profile-1
station's password may have crossed in clear before); a CSR that fails the checks (another station's id named
as such), a certificate type this PKI does not issue, a CSMS without a CA, and more than ``PKI_SIGN_PER_DAY``
requests from one station in a day (that one is recorded once a day, not per request, so a flood of requests cannot
turn into a flood of rows).

V2G certificates (certificateType V2GCertificate, 2.1's V2G20Certificate) are refused with UnsupportedRequest: an
SECC certificate must chain to a V2G root the cars trust, through ISO 15118-2's two CPO sub-CAs and its own profile
(DC=CPO, the EVSE's id as CN). Our single-level sub-CA issues station TLS client certificates; a car would refuse an
SECC certificate from it, so issuing one would only look like Plug & Charge support. A request without a type asks
for a certificate for both uses (schema): the station certificate is issued, which is the part this CSMS serves.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction

from chargers.batch import BatchContext
from chargers.jobs import StationRef
from chargers.models import CertificateSigning, SecurityProfile, Station, StationEventKind
from chargers.pki import ca
from chargers.pki.csr import INVALID_CSR, CsrRefused, csr_check
from chargers.services.certificates import certificate_signings_start, station_owner_name
from chargers.writer import after_batch

LOG = logging.getLogger("chargers.security")

STATION_CERTIFICATE = "ChargingStationCertificate"
RATE_LIMITED = "RateLimitExceeded"
UNSUPPORTED = "UnsupportedRequest"
NOT_ENABLED = "NotEnabled"
INSECURE = "InsecureConnection"
Status = CertificateSigning.Status


def certificate_signing_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    certificate_type = payload.get("certificateType", "")
    request = {
        "station_id": station.pk,
        "received_at": ctx.now,
        "certificate_type": certificate_type,
        "request_id": payload.get("requestId"),
        "over_tls": station.tls,
    }
    recent = CertificateSigning.objects.filter(station_id=station.pk, received_at__gte=ctx.now - timedelta(days=1))
    if recent.count() >= settings.PKI_SIGN_PER_DAY:
        reason = f"more than {settings.PKI_SIGN_PER_DAY} certificate requests in a day"
        if not recent.filter(reason_code=RATE_LIMITED).exists():  # the day's first one over the limit is recorded
            CertificateSigning.objects.create(**request, status=Status.REFUSED, reason_code=RATE_LIMITED, reason=reason)
            _refusal_event(ctx, station, RATE_LIMITED, reason)
        LOG.warning("refused %s's SignCertificate: %s", station.station_id, reason)
        return _rejected(RATE_LIMITED, reason)
    csr = payload["csr"]
    if not station.tls:
        return _refuse(ctx, station, request, csr, INSECURE, "SignCertificate needs a TLS connection (wss://)")
    profile = Station.objects.filter(pk=station.pk).values_list("security_profile", flat=True).first() or 0
    if profile < SecurityProfile.TLS_BASIC:
        reason = f"SignCertificate needs security profile 2 or 3 (the station has {profile})"
        return _refuse(ctx, station, request, csr, INSECURE, reason)
    if certificate_type not in ("", STATION_CERTIFICATE):
        return _refuse(ctx, station, request, csr, UNSUPPORTED, f"this CSMS signs no {certificate_type}")
    if not ca.ca_exists():
        return _refuse(ctx, station, request, csr, NOT_ENABLED, "this CSMS has no PKI (manage.py pki init)")
    try:
        csr_check(pem=csr, station_id=station.station_id, organisation=station_owner_name(station.pk))
    except CsrRefused as exc:
        other = bool(exc.claimed_cn) and Station.objects.filter(station_id=exc.claimed_cn).exists()
        reason = f"CSR for another station's id {exc.claimed_cn[:48]!r}" if other else exc.reason
        return _refuse(ctx, station, request, csr, INVALID_CSR, reason, claimed_cn=exc.claimed_cn[:64])
    signing = CertificateSigning.objects.create(**request, csr=csr, status=Status.ACCEPTED)
    # After COMMIT (never for a batch that rolls back), and after the station's answer: issue, then send.
    transaction.on_commit(partial(after_batch, certificate_signings_start, [signing.pk]))
    return {"status": "Accepted"}


def _refuse(
    ctx: BatchContext,
    station: StationRef,
    request: dict[str, Any],
    csr: str,
    code: str,
    reason: str,
    *,
    claimed_cn: str = "",
) -> dict[str, Any]:
    CertificateSigning.objects.create(**request, csr=csr, status=Status.REFUSED, reason_code=code, reason=reason[:255])
    _refusal_event(ctx, station, code, reason, claimed_cn=claimed_cn)
    LOG.warning("refused %s's SignCertificate (%s): %s", station.station_id, code, reason)
    return _rejected(code, reason)


def _refusal_event(ctx: BatchContext, station: StationRef, code: str, reason: str, **data: Any) -> None:
    ctx.event(
        station,
        StationEventKind.CSR_REFUSED,
        summary=f"SignCertificate refused: {reason}",
        type="CsrRefused",
        reasonCode=code,
        reason=reason,
        **{k: v for k, v in data.items() if v},
    )


def _rejected(code: str, reason: str) -> dict[str, Any]:
    return {"status": "Rejected", "statusInfo": {"reasonCode": code, "additionalInfo": reason[:500]}}
