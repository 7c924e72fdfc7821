"""OCSP (RFC 6960): the responder for what the CPO sub-CA issued, and the client that asks others' responders.

Responder (``GET/POST /pki/ocsp``, ``chargers.pages``): ``responder_answer(request_der)`` always returns a DER
OCSPResponse: ``malformedRequest`` for what does not parse, ``unauthorized`` for another issuer, else a response
signed through ``Ca.ocsp_sign`` (the key never leaves its store) with the register's status: good, revoked (time
and reason), or unknown for a serial it never issued. A nonce is echoed. Signing is what costs (and, behind an HSM,
what queues): answers are cached per (serial, hash algorithm, register status) for ``REBUILD_AFTER``, so a
revocation, in this process or another, changes the key and is answered at once; fresh signatures (cache misses and
nonces) draw on a token bucket, and beyond it a nonce request gets the cached answer without its nonce (RFC 5019's
profile) or, with nothing cached, ``tryLater``, which costs no signature.

Client (Plug & Charge, ``chargers.handlers.plug_and_charge``): ``CertId`` from OCPP's OCSPRequestData,
``http_post`` (asyncio, one deadline for connect + send + receive, size-limited, http/https only) and
``response_check``, which accepts an answer only as RFC 6960 3.2 says: it answers the certificate asked about, it is
signed by the issuer (the key whose hash the request names) or by a responder certificate that issuer gave
id-kp-OCSPSigning, and it is current.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from django.conf import settings

from chargers.models import PkiCertificate
from chargers.pki import ca, storage

VALIDITY = timedelta(hours=1)  # nextUpdate - thisUpdate of our answers: relying parties may cache them this long
REBUILD_AFTER = timedelta(minutes=5)  # a cached answer is re-signed after this (thisUpdate stays recent)
SIGNS_PER_S = 20.0  # fresh signatures per second and process, sustained ...
SIGN_BURST = 40.0  # ... and in a burst
CACHE_ENTRIES = 4096
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


def _hash(algorithm: str, data: bytes) -> bytes:
    digest = hashes.Hash(HASHES[algorithm]())
    digest.update(data)
    return digest.finalize()


def _public_key_bits(cert: x509.Certificate) -> bytes:
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
    return _hash(algorithm, cert.subject.public_bytes()), _hash(algorithm, _public_key_bits(cert))


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

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Responses:
    """Signed answers by (serial, hash algorithm, register status), least recently used dropped beyond
    CACHE_ENTRIES, each re-signed after REBUILD_AFTER; fresh signatures limited by a token bucket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[object, ...], tuple[bytes, datetime]] = OrderedDict()
        self._signs = _Bucket(SIGNS_PER_S, SIGN_BURST)

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

    def may_sign(self) -> bool:
        with self._lock:
            return self._signs.take()

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


def responder_answer(request_der: bytes, *, now: datetime | None = None) -> bytes:
    """The DER OCSPResponse to one DER OCSPRequest (RFC 6960 2.3 for the unsuccessful ones)."""
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
    issuer = _our_issuer()
    if issuer is None or not cert_id.issued_by(issuer.cert):
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)  # we answer for the CPO sub-CA only
    now = now or datetime.now(UTC)
    status, revoked_at, reason = _register_status(cert_id.serial)
    key: tuple[object, ...] = (cert_id, status, revoked_at, reason)
    cached = _RESPONSES.cached(key, now)
    if cached is not None and nonce is None:
        return cached
    if not _RESPONSES.may_sign():
        # Over the signing budget: a nonce request gets the cached answer without its nonce (RFC 5019 2.2.1 lets a
        # responder ignore nonces); with nothing cached, tryLater, which costs no signature.
        return cached if cached is not None else _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=cert_id.issuer_name_hash,
        issuer_key_hash=cert_id.issuer_key_hash,
        serial_number=cert_id.serial,
        algorithm=HASHES[cert_id.algorithm](),
        cert_status={
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status],
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


def responder_answers(requests: Sequence[bytes]) -> list[bytes]:
    """``responder_answer`` for a batch (``chargers.writer`` batcher: the consumers' own-issuer lookups read the
    register and sign on that thread, never on the event loop or the group-commit writer's)."""
    return [responder_answer(request) for request in requests]


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


# --- the client -----------------------------------------------------------------------------------------------------


class FetchError(Exception):
    """The responder (or provider) could not be asked, or did not answer usably."""


def _checked_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise FetchError(f"not a URL: {url[:80]!r}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https URLs are asked, not {url[:80]!r}")
    return parts


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], limit: int) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return body
            if len(body) + size > limit:
                raise FetchError(f"answer larger than {limit} bytes")
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= limit:
            raise FetchError(f"answer of {length} bytes (at most {limit})")
        return await reader.readexactly(length)
    body = await reader.read(limit + 1)
    while len(body) <= limit and (more := await reader.read(limit + 1 - len(body))):
        body += more
    if len(body) > limit:
        raise FetchError(f"answer larger than {limit} bytes")
    return body


async def http_post(url: str, body: bytes, *, content_type: str, accept: str, within_s: float, limit: int) -> bytes:
    """POST ``body`` to ``url`` (HTTP/1.1, no redirects) and return a 200 answer's body; FetchError otherwise.

    One deadline covers connecting, sending and reading, so a responder that dribbles its answer is cut off too.
    """
    parts = _checked_url(url)
    https = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{parts.port}"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nUser-Agent: vpp-csms\r\n\r\n"
    )
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context() if https else None
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status_line = (await reader.readline()).decode("latin-1").split()
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
                raise FetchError("not an HTTP answer")
            headers: dict[str, str] = {}
            for _ in range(100):
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if status_line[1] != "200":
                raise FetchError(f"HTTP {status_line[1]}")
            return await _read_body(reader, headers, limit)
    except TimeoutError as exc:
        raise FetchError(f"no answer within {within_s:g} s") from exc
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}"[:200]) from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


class Status(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    SIGNATURE = "signature"  # the answer is not signed by the issuer or a responder it authorised
    UNAVAILABLE = "unavailable"  # no usable answer: responder down, slow, unsuccessful, stale, about another cert


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str = ""
    der: bytes = b""  # the responder's OCSPResponse, when it sent one
    next_update: datetime | None = None


def _verify(key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _names_signer(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        return response.responder_key_hash == _hash("SHA1", _public_key_bits(cert))
    return response.responder_name == cert.subject


def _signer(
    response: ocsp.OCSPResponse, cert_id: CertId, known: Sequence[x509.Certificate], now: datetime
) -> tuple[x509.Certificate | None, str]:
    """The certificate whose key must have signed ``response`` (RFC 6960 4.2.2.2), or (None, why none may)."""
    issuer = next((c for c in [*response.certificates, *known] if cert_id.issued_by(c)), None)
    if issuer is None:
        return None, "the issuer's certificate is neither in the answer nor known here"
    if _names_signer(response, issuer):
        return issuer, ""
    delegate = next((c for c in response.certificates if _names_signer(response, c)), None)
    if delegate is None:
        return None, "signed by a responder whose certificate is not in the answer"
    try:
        delegate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return None, "the responder's certificate was not issued by the certificate's issuer"
    try:
        usages = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return None, "the responder's certificate lacks id-kp-OCSPSigning"
    if not delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc:
        return None, "the responder's certificate is outside its validity"
    return delegate, ""


def response_check(
    der: bytes, cert_id: CertId, *, known: Sequence[x509.Certificate] = (), now: datetime | None = None
) -> Verdict:
    """What a responder's answer says about ``cert_id``, accepted only as RFC 6960 3.2 allows."""
    now = now or datetime.now(UTC)
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        return Verdict(Status.UNAVAILABLE, "not an OCSP response")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return Verdict(Status.UNAVAILABLE, f"responder answered {response.response_status.name}", der)
    try:
        single = next((s for s in response.responses if CertId.of(s) == cert_id), None)
    except (ValueError, UnsupportedAlgorithm):
        single = None
    if single is None:
        return Verdict(Status.UNAVAILABLE, "the answer is not about the certificate asked about", der)
    try:
        signer, why = _signer(response, cert_id, known, now)
        signed = (response.signature, response.tbs_response_bytes, response.signature_hash_algorithm)
        verified = signer is not None and _verify(signer.public_key(), *signed)
    except (ValueError, UnsupportedAlgorithm) as exc:  # an algorithm or key this library cannot check
        signer, why, verified = None, f"cannot be checked: {exc}"[:200], False
    if signer is None:
        return Verdict(Status.SIGNATURE, why, der)
    if not verified:
        return Verdict(Status.SIGNATURE, "the signature does not verify", der)
    next_update = single.next_update_utc
    if single.this_update_utc > now + CLOCK_SKEW:
        return Verdict(Status.UNAVAILABLE, "thisUpdate is in the future", der)
    if next_update is not None and next_update < now - CLOCK_SKEW:
        return Verdict(Status.UNAVAILABLE, "the answer is stale (nextUpdate has passed)", der)
    status = {
        ocsp.OCSPCertStatus.GOOD: Status.GOOD,
        ocsp.OCSPCertStatus.REVOKED: Status.REVOKED,
        ocsp.OCSPCertStatus.UNKNOWN: Status.UNKNOWN,
    }[single.certificate_status]
    return Verdict(status, "", der, next_update)


@cache
def _bundle_at(path: str, mtime_ns: int) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))


def known_issuers() -> list[x509.Certificate]:
    """CA certificates whose OCSP answers can be verified without the answer carrying them: ours, and the contract
    (MO) CAs in PKI_CONTRACT_CA_FILE."""
    found: list[x509.Certificate] = []
    paths = [storage.cert_path(ca.BUNDLE)]
    if settings.PKI_CONTRACT_CA_FILE:
        paths.append(Path(settings.PKI_CONTRACT_CA_FILE))
    for path in paths:
        try:
            found.extend(_bundle_at(str(path), path.stat().st_mtime_ns))
        except (OSError, ValueError):
            continue
    return found
