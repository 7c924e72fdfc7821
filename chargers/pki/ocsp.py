"""OCSP (RFC 6960): the responder for what the CPO sub-CA issued, and the CertID both it and the client speak.

Responder (``GET/POST /pki/ocsp``, ``chargers.pages``): ``responder_answer(request_der, client=address)`` always
returns a DER OCSPResponse: ``malformedRequest`` for what does not parse, ``unauthorized`` for another issuer and for
a serial the register does not hold (RFC 5019 2.2.3: we are not authoritative for what we never issued; unsigned,
so random serials cost nothing), else a response signed through ``Ca.ocsp_sign`` (the key never leaves its store)
with the register's status: good, or revoked (time and reason). A nonce is echoed. Signing is what costs (and,
behind an HSM, what queues): answers are cached per (CertID, register status) for ``REBUILD_AFTER``, so a
revocation, in this process or another, changes the key and is answered at once; fresh signatures (cache misses and
nonces) draw on two token buckets, the client address's own (an IPv6 /64 counts as one) and the one all public
clients share; beyond them a nonce request gets the cached answer without its nonce (RFC 5019's profile) or, with
nothing cached, ``tryLater``, which costs no signature. This CSMS's own lookups (Plug & Charge) never touch the
public budget: Authorize and GetCertificateChainStatus read the register (``register_statuses``) without signing,
and GetCertificateStatus, which relays a signed answer, signs on a budget of its own (``INTERNAL``). A key store or
register that fails answers ``internalError`` (logged), never an HTTP error.

Client (Plug & Charge): ``CertId`` from OCPP's OCSPRequestData here; asking others' responders and judging their
answers is ``chargers.pki.ocsp_client``'s.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from chargers.models import PkiCertificate
from chargers.pki import ca, storage
from chargers.pki.errors import PkiError

LOG = logging.getLogger("chargers.pki")

VALIDITY = timedelta(hours=1)  # nextUpdate - thisUpdate of our answers: relying parties may cache them this long
REBUILD_AFTER = timedelta(minutes=5)  # a cached answer is re-signed after this (thisUpdate stays recent)
PUBLIC_SIGNS_PER_S = 20.0  # fresh signatures per second and process for all public clients, sustained ...
PUBLIC_SIGN_BURST = 40.0  # ... and in a burst
CLIENT_SIGNS_PER_S = 2.0  # ... for one client address (an IPv6 /64)
CLIENT_SIGN_BURST = 10.0
CLIENTS = 4096  # client addresses whose buckets are kept (the least recently seen dropped)
INTERNAL_SIGNS_PER_S = 20.0  # GetCertificateStatus relays of our own certificates, apart from the public budget
INTERNAL_SIGN_BURST = 40.0
INTERNAL = "internal"  # responder_answer's client for this CSMS's own lookups (no address reads this way)
CACHE_ENTRIES = 16384  # only the register's certificates are signed (x 4 CertID hashes), so the cache holds them
REQUEST_MAX_BYTES = 16 * 1024  # an OCSPRequest for one certificate is ~100 bytes
RESPONSE_MAX_BYTES = 64 * 1024  # what the client reads from a responder (and relays) at most
CLOCK_SKEW = timedelta(minutes=5)  # tolerated between us and a responder
NONCE_MAX_BYTES = 32  # RFC 8954 2.1
PATH = "/pki/ocsp"

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1,  # openssl ocsp's default CertID hash; the responder accepts it, OCPP never sends it
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}


def value_hash(algorithm: str, data: bytes) -> bytes:
    digest = hashes.Hash(HASHES[algorithm]())
    digest.update(data)
    return digest.finalize()


def public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value (RFC 6960 4.1.1 hashes this, not the whole SubjectPublicKeyInfo)."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def _tlv(data: bytes, at: int) -> tuple[int, int]:  # (start of contents, end of contents) of the TLV at `at`
        length, at = data[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            length, at = int.from_bytes(data[at : at + count], "big"), at + count
        return at, at + length

    body, _ = _tlv(der, 0)  # SubjectPublicKeyInfo SEQUENCE
    _, after_algorithm = _tlv(der, body)  # AlgorithmIdentifier SEQUENCE
    bits, end = _tlv(der, after_algorithm)  # BIT STRING: unused-bits octet, then the key
    return der[bits + 1 : end]


def issuer_hashes(cert: x509.Certificate, algorithm: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of the certificates ``cert`` issues, under ``algorithm``."""
    return value_hash(algorithm, cert.subject.public_bytes()), value_hash(algorithm, public_key_bits(cert))


# --- the CertID both sides speak ------------------------------------------------------------------------------------


class OcspDataError(ValueError):
    """OCPP OCSPRequestData / CertificateHashData that cannot name a certificate."""


def _hex_or_base64(value: str, size: int, field: str) -> bytes:
    """A hash as OCPP carries it: hex (what the schema's lengths are made for); base64 is accepted too."""
    text = value.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != size:
        raise OcspDataError(f"{field} is not a {size}-byte hash in hex")
    return raw


@dataclass(frozen=True)
class CertId:
    algorithm: str  # a key of HASHES
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int

    @classmethod
    def from_ocpp(cls, data: dict[str, str]) -> CertId:
        algorithm = data.get("hashAlgorithm", "")
        if algorithm not in ("SHA256", "SHA384", "SHA512"):
            raise OcspDataError(f"hash algorithm {algorithm!r} is not one OCPP names")
        size = HASHES[algorithm]().digest_size
        try:
            serial = int(data.get("serialNumber", "").strip().removeprefix("0x").removeprefix("0X"), 16)
        except ValueError as exc:
            raise OcspDataError("serialNumber is not hexadecimal") from exc
        if serial < 0 or serial.bit_length() > 160:  # RFC 5280 4.1.2.2: at most 20 octets
            raise OcspDataError("serialNumber is out of range")
        return cls(
            algorithm,
            _hex_or_base64(data.get("issuerNameHash", ""), size, "issuerNameHash"),
            _hex_or_base64(data.get("issuerKeyHash", ""), size, "issuerKeyHash"),
            serial,
        )

    @classmethod
    def of(cls, single: ocsp.OCSPRequest | ocsp.OCSPSingleResponse) -> CertId:
        algorithm = single.hash_algorithm.name.upper()
        return cls(algorithm, single.issuer_name_hash, single.issuer_key_hash, single.serial_number)

    @classmethod
    def for_certificate(cls, cert: x509.Certificate, issuer: x509.Certificate, algorithm: str = "SHA256") -> CertId:
        return cls(algorithm, *issuer_hashes(issuer, algorithm), cert.serial_number)

    def request_der(self) -> bytes:
        """An OCSPRequest for this one certificate (no nonce: RFC 5019's profile, answers stay cacheable)."""
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(self.issuer_name_hash, self.issuer_key_hash, self.serial, HASHES[self.algorithm]())
            .build()
        )
        return request.public_bytes(serialization.Encoding.DER)

    def issued_by(self, cert: x509.Certificate) -> bool:
        try:
            return issuer_hashes(cert, self.algorithm) == (self.issuer_name_hash, self.issuer_key_hash)
        except (ValueError, UnsupportedAlgorithm):  # a key type this library cannot read names nobody here
            return False


# --- the responder --------------------------------------------------------------------------------------------------


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


@cache
def _sub_ca_at(path: str, mtime_ns: int) -> ca.Ca:
    return ca.sub_ca()


def _our_issuer() -> ca.Ca | None:
    """The CPO sub-CA, read once per change of its certificate file; None before ``pki init``."""
    path = storage.cert_path(ca.SUB_CA)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _sub_ca_at(str(path), mtime_ns)


def ours(cert_id: CertId) -> bool:
    """Whether ``cert_id`` names a certificate of the CPO sub-CA (this responder answers for it)."""
    issuer = _our_issuer()
    return issuer is not None and cert_id.issued_by(issuer.cert)


_REASONS = {flag.value: flag for flag in x509.ReasonFlags}


def _register_status(serial: int) -> tuple[str, datetime | None, str]:
    row = PkiCertificate.objects.filter(serial=format(serial, "x")).values_list("revoked_at", "revocation_reason")
    found = row.first()
    if found is None:
        return "unknown", None, ""
    revoked_at, reason = found
    return ("revoked", revoked_at, reason) if revoked_at is not None else ("good", None, "")


class _Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, time.monotonic()

    def ready(self) -> bool:
        """Whether a token is there (refilled up to now); ``take`` it then."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens >= 1

    def take(self) -> bool:
        if not self.ready():
            return False
        self.tokens -= 1
        return True


def _client_key(address: str) -> str:
    """The budget an address draws on: itself, or its /64 for IPv6 (one host is commonly given a whole /64)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "?"  # no usable address: all such clients share one bucket
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Responses:
    """Signed answers by (CertID, register status), least recently used dropped beyond CACHE_ENTRIES, each re-signed
    after REBUILD_AFTER; fresh signatures limited by token buckets: per client address and for all public clients
    together, and one of its own for INTERNAL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[object, ...], tuple[bytes, datetime]] = OrderedDict()
        self._public = _Bucket(PUBLIC_SIGNS_PER_S, PUBLIC_SIGN_BURST)
        self._internal = _Bucket(INTERNAL_SIGNS_PER_S, INTERNAL_SIGN_BURST)
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()

    def forget(self) -> None:
        with self._lock:
            self._answers.clear()

    def cached(self, key: tuple[object, ...], now: datetime) -> bytes | None:
        with self._lock:
            hit = self._answers.get(key)
            if hit is None or now - hit[1] >= REBUILD_AFTER:
                return None
            self._answers.move_to_end(key)
            return hit[0]

    def may_sign(self, client: str) -> bool:
        with self._lock:
            if client == INTERNAL:
                return self._internal.take()
            key = _client_key(client)
            bucket = self._clients.get(key)
            if bucket is None:
                bucket = self._clients[key] = _Bucket(CLIENT_SIGNS_PER_S, CLIENT_SIGN_BURST)
                while len(self._clients) > CLIENTS:
                    self._clients.popitem(last=False)
            self._clients.move_to_end(key)
            if not (bucket.ready() and self._public.ready()):
                return False
            return bucket.take() and self._public.take()

    def keep(self, key: tuple[object, ...], der: bytes, now: datetime) -> None:
        with self._lock:
            self._answers[key] = (der, now)
            self._answers.move_to_end(key)
            while len(self._answers) > CACHE_ENTRIES:
                self._answers.popitem(last=False)


_RESPONSES = _Responses()


def responses_forget() -> None:
    _RESPONSES.forget()


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def responder_answer(request_der: bytes, *, client: str, now: datetime | None = None) -> bytes:
    """The DER OCSPResponse to one DER OCSPRequest (RFC 6960 2.3 for the unsuccessful ones) from ``client`` (its
    address, whose signing budget a fresh signature draws on; INTERNAL for this CSMS's own lookups)."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        nonce = _nonce(request)
        cert_id = CertId.of(request)
    except (ValueError, KeyError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)  # more than one CertID lands here too
    if nonce is not None and not 1 <= len(nonce) <= NONCE_MAX_BYTES:
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    if cert_id.algorithm not in HASHES:
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    try:
        return _signed_answer(cert_id, nonce, client, now or datetime.now(UTC))
    except (PkiError, DatabaseError) as exc:
        LOG.error("OCSP responder: cannot answer about serial %x: %s: %s", cert_id.serial, type(exc).__name__, exc)
        return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)


def _signed_answer(cert_id: CertId, nonce: bytes | None, client: str, now: datetime) -> bytes:
    issuer = _our_issuer()
    if issuer is None or not cert_id.issued_by(issuer.cert):
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)  # we answer for the CPO sub-CA only
    status, revoked_at, reason = _register_status(cert_id.serial)
    if status == "unknown":
        # Not ours to vouch for (RFC 5019 2.2.3), and unsigned: a stream of made-up serials costs no signature.
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    key: tuple[object, ...] = (cert_id, status, revoked_at, reason)
    cached = _RESPONSES.cached(key, now)
    if cached is not None and nonce is None:
        return cached
    if not _RESPONSES.may_sign(client):
        # Over the signing budget: a nonce request gets the cached answer without its nonce (RFC 5019 2.2.1 lets a
        # responder ignore nonces); with nothing cached, tryLater, which costs no signature.
        return cached if cached is not None else _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=cert_id.issuer_name_hash,
        issuer_key_hash=cert_id.issuer_key_hash,
        serial_number=cert_id.serial,
        algorithm=HASHES[cert_id.algorithm](),
        cert_status=ocsp.OCSPCertStatus.REVOKED if status == "revoked" else ocsp.OCSPCertStatus.GOOD,
        this_update=now,
        next_update=now + VALIDITY,
        revocation_time=revoked_at,
        revocation_reason=_REASONS.get(reason) if status == "revoked" else None,
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der = issuer.ocsp_sign(builder).public_bytes(serialization.Encoding.DER)
    if nonce is None:
        _RESPONSES.keep(key, der, now)
    return der


_INTERNAL_ERROR = _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)


def responder_answers(requests: Sequence[bytes]) -> list[bytes]:
    """``responder_answer`` for INTERNAL, in a batch (``chargers.writer`` batcher: GetCertificateStatus relays of our
    own certificates read the register and sign on that thread, never on the event loop or the group commit's)."""
    answers = [responder_answer(request, client=INTERNAL) for request in requests]
    if _INTERNAL_ERROR in answers:
        close_old_connections()  # a connection that failed is dropped here, as the writer does with its own failures
    return answers


def register_statuses(cert_ids: Sequence[CertId]) -> list[tuple[str, datetime | None, str]]:
    """(status, revoked_at, reason) from the register for CPO sub-CA CertIDs (``ours``): "good", "revoked" or
    "unknown". A batch function for ``chargers.writer``: Authorize and GetCertificateChainStatus ask without signing."""
    return [_register_status(cert_id.serial) for cert_id in cert_ids]


def responder_url() -> str | None:
    """Our responder's public URL (PKI_OCSP_URL, the public base URL, + /pki/ocsp), if one is configured."""
    base = settings.PKI_OCSP_URL
    if not base:
        return None
    base = base.rstrip("/")
    return base if base.endswith(PATH) else base + PATH


def aia_extension() -> x509.AuthorityInformationAccess | None:
    """The authorityInfoAccess naming our responder, for the leaf certificates we issue (RFC 6960 3.1)."""
    url = responder_url()
    if url is None:
        return None
    return x509.AuthorityInformationAccess(
        [x509.AccessDescription(x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]
    )


def aia_url(cert: x509.Certificate) -> str | None:
    """The OCSP responder a certificate names in its authorityInfoAccess (the first http(s) one), if any."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for description in access:
        location = description.access_location
        if description.access_method == x509.AuthorityInformationAccessOID.OCSP and isinstance(
            location, x509.UniformResourceIdentifier
        ):
            return location.value
    return None
