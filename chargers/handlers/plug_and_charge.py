"""Plug & Charge, CSMS side (ISO 15118 via OCPP 2.0.1 blocks C and M, 2.1's M07): contract certificates checked by
OCSP in Authorize, GetCertificateStatus relayed to the responder, Get15118EVCertificate relayed to the
contract-certificate provider, GetCertificateChainStatus answered from the responders.

Every one of these needs the network, and the group-commit writer must never wait on it (its batch holds every
station's writes). So each action has two halves: a ``*_prefetch`` coroutine the consumer awaits on the event loop
before it submits the call (``registry.PREFETCH``), bounded by its own deadline, and a batch handler that stores the
call and answers with what the prefetch found (``BatchContext.looked_up``). A station waiting on a slow responder
holds up nothing but its own answer. Questions about certificates the CPO sub-CA issued are answered from the
register (``chargers.pki.ocsp``) on a batcher thread of their own, not over HTTP to ourselves and never on the
public responder's signing budget. Third-party answers are believed only from issuers this CSMS trusts, kept,
verified, until their nextUpdate; a responder is asked within per-message, per-station and total bounds, and one
that failed is left alone for a while.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from django.conf import settings

from chargers.batch import BatchContext
from chargers.handlers.common import datetime_iso
from chargers.jobs import StationRef
from chargers.pki import ocsp, ocsp_client
from chargers.pki.ocsp import CertId, OcspDataError
from chargers.pki.ocsp_client import Status, Verdict
from chargers.writer import writer_for_loop

LOG = logging.getLogger(__name__)
CACHE_ENTRIES = 4096
CACHE_MAX = timedelta(days=1)  # an answer is kept until its nextUpdate, and never longer than this
OCSP_RESULT_MAX = {"2.0.1": 5500, "2.1": 18000}  # GetCertificateStatusResponse.ocspResult maxLength
EXI_RESPONSE_MAX = {"2.0.1": 7500, "2.1": 17000}  # Get15118EVCertificateResponse.exiResponse maxLength
PROVIDER_ANSWER_MAX_BYTES = 64 * 1024
# The contract-certificate validation statuses for which the idToken's own status is kept (C07.FR.13: a valid
# certificate with an eMAID the CSMS does not accept is ContractCancelled, the token's status says why).
TOKEN_REFUSALS = frozenset({"Blocked", "Expired", "Invalid", "Unknown"})


# --- OCSP answers, ours and others' -----------------------------------------------------------------------------


class _Answers:
    """Third-party answers: verified ones until their nextUpdate (capped at CACHE_MAX); for
    PKI_OCSP_FAILURE_CACHE_S, answers that could not be used (kept for that certificate: a responder that rightly
    refuses a made-up certificate stays usable for others) and responders that could not be asked at all (kept for
    the URL, ``cert_id`` None: no connection, timeout, HTTP error). The oldest dropped beyond CACHE_ENTRIES. Our own
    responder's answers are not kept here: the register is asked each time, so a revocation counts at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[CertId | None, str], tuple[Verdict, datetime]] = OrderedDict()

    def get(self, cert_id: CertId, url: str, now: datetime) -> Verdict | None:
        with self._lock:
            for key in ((cert_id, url), (None, url)):
                hit = self._kept.get(key)
                if hit is not None and now >= hit[1]:
                    del self._kept[key]
                elif hit is not None:
                    return hit[0]
            return None

    def keep(self, cert_id: CertId | None, url: str, verdict: Verdict, now: datetime) -> None:
        if verdict.status in (Status.GOOD, Status.REVOKED, Status.UNKNOWN):
            if verdict.next_update is None:
                return  # no nextUpdate: "newer information is available all the time" (RFC 6960 2.4)
            until = min(verdict.next_update, now + CACHE_MAX)
        else:
            until = now + timedelta(seconds=settings.PKI_OCSP_FAILURE_CACHE_S)
        with self._lock:
            self._kept[(cert_id, url)] = (verdict, until)
            self._kept.move_to_end((cert_id, url))
            while len(self._kept) > CACHE_ENTRIES:
                self._kept.popitem(last=False)

    def forget(self) -> None:
        with self._lock:
            self._kept.clear()


ANSWERS = _Answers()


class Lookups:
    """One station message's OCSP look-ups: the station (its share of look-ups in flight) and how many responders
    the message may still have asked (PKI_OCSP_URLS_PER_MESSAGE; kept answers and ours do not count)."""

    def __init__(self, station: StationRef) -> None:
        self.station_id = station.station_id
        self.urls_left = settings.PKI_OCSP_URLS_PER_MESSAGE


async def _our_answer(cert_id: CertId, *, signed: bool, anchors: list[x509.Certificate]) -> Verdict:
    """Our own responder's word on one of the CPO sub-CA's certificates, from the register on a batcher thread:
    never over HTTP and never on the public signing budget. Unsigned unless ``signed`` (a relay needs the DER)."""
    try:
        if signed:
            der = await writer_for_loop(ocsp.responder_answers).submit(cert_id.request_der())
            return ocsp_client.response_check(der, cert_id, anchors=anchors)
        status, _, _ = await writer_for_loop(ocsp.register_statuses).submit(cert_id)
    except Exception as exc:  # the register cannot be read now: no answer, never a guess
        return Verdict(Status.UNAVAILABLE, f"our responder: {type(exc).__name__}: {exc}"[:300])
    reason = "not in our register" if status == "unknown" else ""
    return Verdict(Status(status), reason, b"", datetime.now(UTC) + ocsp.VALIDITY)


async def certificate_ask(
    cert_id: CertId, url: str, lookups: Lookups, *, issuer: x509.Certificate | None = None, signed: bool = False
) -> Verdict:
    """What the responder at ``url`` (or, for the CPO sub-CA's certificates, our own) says about ``cert_id``.

    Only an issuer this CSMS trusts is believed (``ocsp_client.response_check``): ``issuer``, when the caller has
    already checked it chains up to a trust anchor (a PEM chain validated centrally), is trusted as well. ``signed``:
    the caller relays the answer, so ours is signed too. A responder is asked within the message's and the
    station's bounds (``Lookups``, ``ocsp_client.outbound_slot``), and not while a recent failure is remembered.
    """
    anchors = [*ocsp_client.known_issuers(), *([issuer] if issuer is not None else [])]
    if ocsp.ours(cert_id):
        return await _our_answer(cert_id, signed=signed, anchors=anchors)
    kept = ANSWERS.get(cert_id, url, datetime.now(UTC))
    if kept is not None:
        return kept
    if lookups.urls_left <= 0:
        limit = settings.PKI_OCSP_URLS_PER_MESSAGE
        return Verdict(Status.UNAVAILABLE, f"{url[:100]}: not asked, one message may have {limit} responders asked")
    lookups.urls_left -= 1
    async with ocsp_client.outbound_slot(lookups.station_id):
        now = datetime.now(UTC)
        kept = ANSWERS.get(cert_id, url, now)  # asked meanwhile (while this waited for its slot)
        if kept is not None:
            return kept
        try:
            der = await ocsp_client.http_post(
                url,
                cert_id.request_der(),
                content_type="application/ocsp-request",
                accept="application/ocsp-response",
                within_s=settings.PKI_OCSP_TIMEOUT_S,
                limit=ocsp.RESPONSE_MAX_BYTES,
            )
        except ocsp_client.FetchError as exc:
            verdict = Verdict(Status.UNAVAILABLE, f"{url[:100]}: {exc}")
            if not isinstance(exc, ocsp_client.Busy):  # our own congestion says nothing about the responder
                ANSWERS.keep(None, url, verdict, now)
            return verdict
    verdict = ocsp_client.response_check(der, cert_id, anchors=anchors, now=now)
    ANSWERS.keep(cert_id, url, verdict, now)
    return verdict


async def _ask_entry(entry: dict[str, Any], lookups: Lookups) -> Verdict:
    try:
        cert_id = CertId.from_ocpp(entry)
    except OcspDataError as exc:
        return Verdict(Status.UNAVAILABLE, f"unusable certificate hash data: {exc}")
    return await certificate_ask(cert_id, str(entry.get("responderURL", "")), lookups)


def _deadline() -> float:
    """The whole prefetch's bound: a message's responders are asked PKI_OCSP_LOOKUPS_PER_STATION at a time, each
    within PKI_OCSP_TIMEOUT_S (with the defaults, four responders in two rounds)."""
    rounds = -(-settings.PKI_OCSP_URLS_PER_MESSAGE // settings.PKI_OCSP_LOOKUPS_PER_STATION)
    return rounds * settings.PKI_OCSP_TIMEOUT_S + 1


# --- Authorize with a contract certificate (C07) -------------------------------------------------------------------


def authorize_certificate_status(verdicts: Iterable[Verdict]) -> str:
    """AuthorizeCertificateStatusEnumType for the chain's answers (one per certificate the station hashed).

    Revoked anywhere: CertificateRevoked (C07.FR.16). An answer that is not signed by the certificate's issuer nor
    by a responder it authorised: SignatureError. Every one good: Accepted. Anything else fails closed as
    CertChainError: an issuer that chains up to no trust anchor here (whatever its own responder says), an
    ``unknown`` answer (the issuer's responder does not know the certificate, RFC 6960 2.2), hash
    data naming no certificate, and a responder that is down, slow or answers unusably. OCPP 2.0.1 names no status
    for "could not be checked"; C07.FR.04 wants acceptance or a reason for rejection, and a chain whose revocation
    status is undetermined has not been validated (RFC 5280 6.1.3 (a)(3)), so it is not Accepted, and the one
    rejection that says the chain could not be validated is CertChainError (not NoCertificateAvailable: the
    station did present a certificate). The station may retry; a driver is never charged on an unchecked contract.
    """
    statuses = {verdict.status for verdict in verdicts}
    if Status.REVOKED in statuses:
        return "CertificateRevoked"
    if Status.SIGNATURE in statuses:
        return "SignatureError"
    if statuses == {Status.GOOD}:
        return "Accepted"
    return "CertChainError"


def central_chain(pem: str, now: datetime) -> tuple[list[tuple[CertId, str, x509.Certificate]], str]:
    """C07.FR.06, central validation of the PEM chain a station could not validate (leaf first, up to but excluding
    the root): ``(one OCSP question per certificate, "")``, or ``([], the certificateStatus refusing it)``. A
    question is (CertID, responder URL, the certificate's issuer, checked here to chain up to a trust anchor).

    The chain must link up, each certificate signed by the next, to a trust anchor this CSMS knows (our CAs and
    PKI_CONTRACT_CA_FILE); every certificate must be within its validity; each is asked about at the responder its
    authorityInfoAccess names (ours answer from the register), and one without a responder cannot be checked.
    """
    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return [], "NoCertificateAvailable"  # nothing readable was presented
    anchors = ocsp_client.known_issuers()
    if chain and any(chain[-1] == anchor for anchor in anchors):
        chain = chain[:-1]  # the station sent the root along
    if not chain:
        return [], "CertChainError"
    anchor = next((a for a in anchors if ocsp_client.issued_by(chain[-1], a)), None)
    links = itertools.pairwise(chain)
    if anchor is None or not all(ocsp_client.issued_by(cert, issuer) for cert, issuer in links):
        return [], "CertChainError"
    if any(not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc for cert in [*chain, anchor]):
        return [], "CertificateExpired"
    issuers = [*chain[1:], anchor]
    questions = [
        (CertId.for_certificate(cert, issuer), ocsp.aia_url(cert) or "", issuer)
        for cert, issuer in zip(chain, issuers, strict=True)
    ]
    if any(not url and not ocsp.ours(cert_id) for cert_id, url, _ in questions):
        return [], "CertChainError"  # a certificate whose revocation status nobody can be asked about
    return questions, ""


async def authorize_prefetch(station: StationRef, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The contract certificate's status for an Authorize that carries one; None for any other Authorize.

    The station's hash data when it sent some (it validated the chain itself), else its PEM chain (C07.FR.06).
    """
    entries = payload.get("iso15118CertificateHashData") or []
    questions: list[tuple[CertId, str, x509.Certificate]] = []
    if not entries:
        if not payload.get("certificate"):
            return None
        questions, refusal = central_chain(payload["certificate"], datetime.now(UTC))
        if refusal:
            LOG.warning("Authorize from %s: the PEM contract chain: %s", station.station_id, refusal)
            return {"certificateStatus": refusal, "reasons": [f"central chain validation: {refusal}"]}
    lookups = Lookups(station)
    asks = [_ask_entry(entry, lookups) for entry in entries] + [
        certificate_ask(cid, url, lookups, issuer=issuer) for cid, url, issuer in questions
    ]
    try:
        async with asyncio.timeout(_deadline()):
            verdicts = await asyncio.gather(*asks)
    except TimeoutError:
        verdicts = [Verdict(Status.UNAVAILABLE, f"no answer within {_deadline():g} s")]
    status = authorize_certificate_status(verdicts)
    reasons = [v.reason for v in verdicts if v.reason]
    if status != "Accepted":
        LOG.warning(
            "Authorize from %s: contract certificate %s: %s",
            station.station_id,
            status,
            "; ".join(reasons) or "revoked",
        )
    return {"certificateStatus": status, "reasons": reasons}


def contract_authorize(ctx: BatchContext, id_token_info: dict[str, Any]) -> dict[str, Any]:
    """Authorize's answer for a contract certificate (C07.FR.13 to 16): the prefetched certificate status combined
    with the eMAID's own status; anything but a good certificate is Invalid (an expired one: Expired)."""
    looked_up = ctx.looked_up
    certificate_status = looked_up["certificateStatus"] if looked_up else "CertChainError"  # not checked: refused
    if certificate_status == "Accepted":
        if id_token_info["status"] in TOKEN_REFUSALS:
            return {"idTokenInfo": id_token_info, "certificateStatus": "ContractCancelled"}
        return {"idTokenInfo": id_token_info, "certificateStatus": "Accepted"}
    token_status = "Expired" if certificate_status == "CertificateExpired" else "Invalid"
    return {"idTokenInfo": {"status": token_status}, "certificateStatus": certificate_status}


# --- GetCertificateStatus (M06): relay -------------------------------------------------------------------------


def _failed(reason_code: str, info: str) -> dict[str, Any]:
    return {"status": "Failed", "statusInfo": {"reasonCode": reason_code, "additionalInfo": info[:512]}}


async def certificate_status_prefetch(station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """The responder's DER OCSPResponse, base64, when it answered about this certificate; else Failed.

    Relayed as the responder signed it: the station verifies it against its own roots, so an answer whose issuer
    this CSMS does not know is relayed all the same; one that is about another certificate, unsuccessful or stale
    is not.
    """
    data = payload["ocspRequestData"]
    try:
        cert_id = CertId.from_ocpp(data)
    except OcspDataError as exc:
        return _failed("InvalidData", str(exc))
    try:
        async with asyncio.timeout(_deadline()):
            verdict = await certificate_ask(cert_id, str(data.get("responderURL", "")), Lookups(station), signed=True)
    except TimeoutError:
        verdict = Verdict(Status.UNAVAILABLE, f"no answer within {_deadline():g} s")
    if verdict.status == Status.UNAVAILABLE or not verdict.der:
        LOG.warning("GetCertificateStatus from %s: %s", station.station_id, verdict.reason)
        return _failed("NoResponse", verdict.reason)
    result = base64.b64encode(verdict.der).decode("ascii")
    if len(result) > OCSP_RESULT_MAX.get(station.version, 5500):
        return _failed("TooLarge", f"the responder's answer ({len(verdict.der)} bytes) exceeds ocspResult")
    return {"status": "Accepted", "ocspResult": result}


def certificate_status_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    looked_up: dict[str, Any] | None = ctx.looked_up
    return looked_up if looked_up is not None else _failed("NoResponse", "the responder was not asked")


# --- Get15118EVCertificate (M01/M02): relay to the contract-certificate provider ------------------------------


def _provider_failed(reason_code: str, info: str) -> dict[str, Any]:
    return {"status": "Failed", "exiResponse": "", "statusInfo": {"reasonCode": reason_code, "additionalInfo": info}}


def _provider_answer(raw: bytes, version: str) -> dict[str, Any]:
    """The provider's JSON ``{"status", "exiResponse"[, "remainingContracts"]}`` as the station's answer."""
    try:
        answer = json.loads(raw)
        status, exi = answer["status"], answer.get("exiResponse", "")
        if status not in ("Accepted", "Failed") or not isinstance(exi, str):
            raise ValueError("status or exiResponse")
        base64.b64decode(exi, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return _provider_failed("ProviderError", f"the provider's answer is unusable: {exc}"[:512])
    if len(exi) > EXI_RESPONSE_MAX.get(version, 7500):
        return _provider_failed("TooLarge", "the provider's exiResponse exceeds the field")
    result: dict[str, Any] = {"status": status, "exiResponse": exi}
    remaining = answer.get("remainingContracts")
    if version == "2.1" and isinstance(remaining, int) and not isinstance(remaining, bool) and remaining >= 0:
        result["remainingContracts"] = remaining
    return result


async def ev_certificate_prefetch(station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    """Relay the EV's CertificateInstallationReq/UpdateReq (EXI, base64; not decoded here) to the provider.

    Wire format (POST PKI_CONTRACT_PROVIDER_URL, application/json): the request's own fields plus ``stationId``
    and ``ocppVersion``; the provider answers ``{"status": "Accepted"|"Failed", "exiResponse": base64}``.
    """
    url = settings.PKI_CONTRACT_PROVIDER_URL
    if not url:
        return _provider_failed("NotEnabled", "no contract-certificate provider is configured")
    fields = ("iso15118SchemaVersion", "action", "exiRequest", "maximumContractCertificateChains", "prioritizedEMAIDs")
    body = {name: payload[name] for name in fields if name in payload}
    body |= {"stationId": station.station_id, "ocppVersion": station.version}
    try:
        raw = await ocsp_client.http_post(
            url,
            json.dumps(body).encode(),
            content_type="application/json",
            accept="application/json",
            within_s=settings.PKI_CONTRACT_PROVIDER_TIMEOUT_S,
            limit=PROVIDER_ANSWER_MAX_BYTES,
            untrusted=False,  # the operator's own setting, not a station's say-so
        )
    except ocsp_client.FetchError as exc:
        LOG.warning("Get15118EVCertificate from %s: the contract-certificate provider: %s", station.station_id, exc)
        return _provider_failed("NoResponse", f"the contract-certificate provider: {exc}"[:512])
    return _provider_answer(raw, station.version)


def ev_certificate_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    looked_up: dict[str, Any] | None = ctx.looked_up
    return looked_up if looked_up is not None else _provider_failed("NoResponse", "the provider was not asked")


# --- GetCertificateChainStatus (2.1, M07) -------------------------------------------------------------------------

_CHAIN_STATUS = {Status.GOOD: "Good", Status.REVOKED: "Revoked", Status.UNKNOWN: "Unknown"}


async def _chain_entry(request: dict[str, Any], lookups: Lookups) -> dict[str, Any]:
    now = datetime.now(UTC)
    answer = {"certificateHashData": request["certificateHashData"], "source": request["source"]}
    try:
        cert_id = CertId.from_ocpp(request["certificateHashData"])
    except OcspDataError:
        return answer | {"status": "Failed", "nextUpdate": datetime_iso(now)}
    # Ours: our responder's answer, whatever the source named (the register behind the CRL and OCSP is one).
    # Others': their OCSP responders, in the order given; a CRL source is not fetched (no CRL client here).
    urls = [""] if ocsp.ours(cert_id) else (request["urls"] if request["source"] == "OCSP" else [])
    for url in urls:
        verdict = await certificate_ask(cert_id, url, lookups)
        if verdict.status in _CHAIN_STATUS:
            next_update = verdict.next_update or now
            return answer | {"status": _CHAIN_STATUS[verdict.status], "nextUpdate": datetime_iso(next_update)}
        LOG.warning("GetCertificateChainStatus: %s", verdict.reason)
    return answer | {"status": "Failed", "nextUpdate": datetime_iso(now)}


async def chain_status_prefetch(station: StationRef, payload: dict[str, Any]) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(_deadline()):
            lookups = Lookups(station)
            entries = [_chain_entry(request, lookups) for request in payload["certificateStatusRequests"]]
            return {"certificateStatus": await asyncio.gather(*entries)}
    except TimeoutError:
        LOG.warning("GetCertificateChainStatus from %s: no answers within %g s", station.station_id, _deadline())
        return None


def chain_status_answer(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    looked_up: dict[str, Any] | None = ctx.looked_up
    if looked_up is not None:
        return looked_up
    now = datetime_iso(ctx.now)
    return {
        "certificateStatus": [
            {
                "certificateHashData": req["certificateHashData"],
                "source": req["source"],
                "status": "Failed",
                "nextUpdate": now,
            }
            for req in payload["certificateStatusRequests"]
        ]
    }
