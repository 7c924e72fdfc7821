"""OCSP (RFC 6960) client: asks others' responders for Plug & Charge (``chargers.handlers.plug_and_charge``).

``http_post`` (asyncio, one deadline for connect + send + receive, size-limited, http/https only; one httpx client
per event loop, name look-ups for station-given URLs on a small executor of their own with a bound on those
pending; ``outbound_slot`` bounds the look-ups in flight per station and in all) and
``response_check``, which accepts an answer only as RFC 6960 3.2 says: it answers the certificate asked about, it is
signed by the issuer (the key whose hash the request names) or by a responder certificate that issuer gave
id-kp-OCSPSigning, and it is current; and only when that issuer is one this CSMS trusts: a trust anchor (our CAs,
PKI_CONTRACT_CA_FILE) or a CA certificate that chains up to one. The certificates an answer carries help find the
issuer, its chain and a delegated responder; they never make an issuer trusted on their own (anyone can make a CA,
and the responder's URL is a station's say-so). The responder and ``CertId`` are ``chargers.pki.ocsp``'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import ipaddress
import logging
import socket
import threading
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from django.conf import settings

from chargers.pki import ca, storage
from chargers.pki.ocsp import CLOCK_SKEW, CertId, public_key_bits, value_hash

LOG = logging.getLogger("chargers.pki")
MAX_CHAIN = 4  # CA certificates between an issuer and its trust anchor, at most
RESOLVER_THREADS = 4  # name look-ups of station-given hosts run on these, never on the loop's default executor
RESOLVES_PENDING_MAX = 16  # such look-ups queued or running at most; beyond, a look-up is refused at once


class FetchError(Exception):
    """The responder (or provider) could not be asked, or did not answer usably."""


class Busy(FetchError):
    """Not asked because this server has too much outbound work pending (nothing said about the responder)."""


def _checked_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise FetchError(f"not a URL: {url[:80]!r}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http and https URLs are asked, not {url[:80]!r}")
    return parts


class _Resolver:
    """getaddrinfo on a few threads of its own: a slow name server (a station chooses the host) can occupy only
    these, and at most RESOLVES_PENDING_MAX look-ups wait or run; a look-up its caller gave up on before it started
    is dropped, one that started holds its place until the system resolver returns."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="ocsp-resolve")
        self._lock = threading.Lock()
        self._pending = 0

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def getaddrinfo(self, host: str, port: int) -> list[Any]:
        with self._lock:
            if self._pending >= RESOLVES_PENDING_MAX:
                raise Busy(f"{RESOLVES_PENDING_MAX} name look-ups pending: {host[:80]!r} is not resolved now")
            self._pending += 1
        future: concurrent.futures.Future[Any] = self._executor.submit(
            socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
        )
        future.add_done_callback(self._done)  # also when cancelled before it ran
        return list(await asyncio.wrap_future(future))


_RESOLVER = _Resolver()


async def _address_check(host: str, port: int) -> str:
    """The address to connect to for a URL a station gave us: one that is not this network's own.

    ``responderURL`` and authorityInfoAccess come from stations and the certificates they present: without this check
    a station could make the CSMS POST to loopback, link-local (cloud metadata) or private services. Addresses in
    ``PKI_OUTBOUND_ALLOWED_NETWORKS`` (CIDRs; e.g. an in-house responder) are allowed. The host is resolved once and
    the connection goes to the address checked, so a second DNS answer cannot swap it (rebinding).
    """
    try:
        infos = await _RESOLVER.getaddrinfo(host, port)
    except OSError as exc:
        raise FetchError(f"cannot resolve {host[:80]!r}: {exc}") from exc
    allowed = [ipaddress.ip_network(cidr) for cidr in settings.PKI_OUTBOUND_ALLOWED_NETWORKS]
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if any(address in network for network in allowed) or address.is_global:
            return str(address)
    raise FetchError(f"{host[:80]!r} is not a public address (PKI_OUTBOUND_ALLOWED_NETWORKS allows others)")


class _Outbound:
    """One event loop's outbound state: its httpx client (built once: each builds an SSL context, tens of ms on the
    loop) and the bounds on look-ups in flight, per station and in all."""

    def __init__(self) -> None:
        # No keep-alive: requests are pinned to an address with the host in the Host header and SNI, and a pooled
        # connection (keyed by address) must never carry one host's request over a TLS session verified for another.
        limits = httpx.Limits(max_keepalive_connections=0)
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False, limits=limits)
        self.total = asyncio.Semaphore(settings.PKI_OCSP_LOOKUPS_TOTAL)
        self.stations: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}


# Per loop (Daphne runs one; tests one per test): dropped with its loop. The client holds no connection between
# requests (no keep-alive), so there is nothing to close when the loop goes.
_OUTBOUND: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbound] = weakref.WeakKeyDictionary()


def _outbound() -> _Outbound:
    loop = asyncio.get_running_loop()
    state = _OUTBOUND.get(loop)
    if state is None:
        state = _OUTBOUND[loop] = _Outbound()
    return state


@asynccontextmanager
async def outbound_slot(station_id: str) -> AsyncIterator[None]:
    """Waits for a look-up slot of ``station_id`` (PKI_OCSP_LOOKUPS_PER_STATION) and then one of all stations'
    (PKI_OCSP_LOOKUPS_TOTAL), held for the block: one station's burst of responders queues behind itself."""
    state = _outbound()
    semaphore, users = state.stations.setdefault(
        station_id, (asyncio.Semaphore(settings.PKI_OCSP_LOOKUPS_PER_STATION), [0])
    )
    users[0] += 1
    try:
        async with semaphore, state.total:
            yield
    finally:
        users[0] -= 1
        if not users[0]:
            del state.stations[station_id]


async def http_post(
    url: str, body: bytes, *, content_type: str, accept: str, within_s: float, limit: int, untrusted: bool = True
) -> bytes:
    """POST ``body`` to ``url`` (httpx, no redirects, no proxy from the environment) and return a 200 answer's body
    of at most ``limit`` bytes; FetchError otherwise.

    One deadline covers resolving, connecting, sending and reading, so a responder that dribbles its answer is cut off
    too. ``untrusted`` (a URL a station gave): only public addresses, or those allowed (``_address_check``); the
    operator's own settings (the contract-certificate provider) are trusted.
    """
    parts = _checked_url(url)
    https = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    headers = {"Content-Type": content_type, "Accept": accept, "User-Agent": "vpp-csms"}
    extensions: dict[str, str] = {}
    try:
        async with asyncio.timeout(within_s):
            target = httpx.URL(url)
            if untrusted:
                address = await _address_check(host, port)
                headers["Host"] = target.netloc.decode("ascii")
                target = target.copy_with(host=address)
                if https:
                    extensions["sni_hostname"] = host  # TLS names (and verifies) the host, not the address
            client = _outbound().client
            request = client.build_request(
                "POST", target, content=body, headers=headers, extensions=extensions, timeout=within_s
            )
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code}")
                return await _body(response, limit)
            finally:
                await response.aclose()
    except TimeoutError as exc:
        raise FetchError(f"no answer within {within_s:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}"[:200]) from exc


async def _body(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FetchError(f"answer of {declared} bytes (at most {limit})")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise FetchError(f"answer larger than {limit} bytes")
    return bytes(body)


class Status(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    SIGNATURE = "signature"  # the answer is not signed by the issuer or a responder it authorised
    UNTRUSTED = "untrusted"  # the certificate's issuer is not a trust anchor here, nor chains up to one
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
        return response.responder_key_hash == value_hash("SHA1", public_key_bits(cert))
    return response.responder_name == cert.subject


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` and ``cert`` names it as its issuer."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _usable_ca(cert: x509.Certificate, now: datetime) -> bool:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    return is_ca and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def vouched_for(
    cert: x509.Certificate, anchors: Sequence[x509.Certificate], carried: Sequence[x509.Certificate], now: datetime
) -> bool:
    """Whether the CA certificate ``cert`` is a trust anchor or chains up to one: each certificate on the way a CA
    within its validity, signed by the next, which is taken from ``carried`` (what an answer brought) until an
    anchor signed one; at most MAX_CHAIN of them."""
    current: x509.Certificate | None = cert
    for _ in range(MAX_CHAIN):
        if current is None:
            return False
        if current in anchors:
            return True
        if not _usable_ca(current, now):
            return False
        if any(issued_by(current, anchor) for anchor in anchors):
            return True
        below = current
        current = next((c for c in carried if c != below and issued_by(below, c)), None)
    return False


def _signer(
    response: ocsp.OCSPResponse, cert_id: CertId, anchors: Sequence[x509.Certificate], now: datetime
) -> tuple[x509.Certificate | None, Status, str]:
    """The certificate whose key must have signed ``response`` (RFC 6960 4.2.2.2), or (None, status, why none may):
    UNTRUSTED when the issuer is not one this CSMS trusts, SIGNATURE when it is but did not authorise the signer."""
    carried = list(response.certificates)
    issuers = [c for c in [*anchors, *carried] if cert_id.issued_by(c)]
    if not issuers:
        return None, Status.UNTRUSTED, "the issuer's certificate is neither in the answer nor trusted here"
    issuer = next((c for c in issuers if vouched_for(c, anchors, carried, now)), None)
    if issuer is None:
        why = "the issuer is not a trust anchor here (our CAs, PKI_CONTRACT_CA_FILE) and does not chain up to one"
        return None, Status.UNTRUSTED, why
    if _names_signer(response, issuer):
        return issuer, Status.GOOD, ""
    delegate = next((c for c in carried if _names_signer(response, c)), None)
    if delegate is None:
        return None, Status.SIGNATURE, "signed by a responder whose certificate is not in the answer"
    if not issued_by(delegate, issuer):
        return None, Status.SIGNATURE, "the responder's certificate was not issued by the certificate's issuer"
    try:
        usages = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return None, Status.SIGNATURE, "the responder's certificate lacks id-kp-OCSPSigning"
    if not delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc:
        return None, Status.SIGNATURE, "the responder's certificate is outside its validity"
    return delegate, Status.GOOD, ""


def response_check(
    der: bytes, cert_id: CertId, *, anchors: Sequence[x509.Certificate], now: datetime | None = None
) -> Verdict:
    """What a responder's answer says about ``cert_id``, accepted only as RFC 6960 3.2 allows and only from an
    issuer ``anchors`` (``known_issuers()``, plus what the caller has verified itself) vouch for."""
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
        signer, refusal, why = _signer(response, cert_id, anchors, now)
        signed = (response.signature, response.tbs_response_bytes, response.signature_hash_algorithm)
        verified = signer is not None and _verify(signer.public_key(), *signed)
    except (ValueError, UnsupportedAlgorithm) as exc:  # an algorithm or key this library cannot check
        signer, refusal, why, verified = None, Status.SIGNATURE, f"cannot be checked: {exc}"[:200], False
    if signer is None:
        return Verdict(refusal, why, der)
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


@cache
def _unreadable(path: str, mtime_ns: int, why: str) -> None:
    """Says once (per file version and reason) that a CA bundle is not read: its CAs are then not trusted."""
    LOG.error("the CA bundle %s cannot be read, its CAs are not trusted: %s", path, why)


def known_issuers() -> list[x509.Certificate]:
    """The trust anchors for OCSP answers and contract chains: our CAs, and the contract (MO) CAs in
    PKI_CONTRACT_CA_FILE. A bundle that cannot be read is logged (once) and trusts nothing."""
    found: list[x509.Certificate] = []
    paths = [storage.cert_path(ca.BUNDLE)]
    if settings.PKI_CONTRACT_CA_FILE:
        paths.append(Path(settings.PKI_CONTRACT_CA_FILE))
    for n, path in enumerate(paths):
        mtime_ns = 0
        try:
            mtime_ns = path.stat().st_mtime_ns
            found.extend(_bundle_at(str(path), mtime_ns))
        except FileNotFoundError as exc:
            if n > 0:  # our own bundle is missing until `pki init`: nothing to say then
                _unreadable(str(path), mtime_ns, str(exc))
        except (OSError, ValueError) as exc:
            _unreadable(str(path), mtime_ns, f"{type(exc).__name__}: {exc}")
    return found
