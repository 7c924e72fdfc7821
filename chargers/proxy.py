"""TLS terminated in front of Daphne (HAProxy; ``deploy/haproxy.cfg``): the client's TLS as the proxy saw it.

Behind a TLS-terminating proxy Daphne sees a plain connection from the proxy. The proxy says what it saw in request
headers: ``X-Forwarded-Proto`` (``https`` on its TLS port), ``X-Forwarded-For`` (the client's address),
``Client-Cert`` (RFC 9440: the client certificate's DER, base64, between colons) and ``X-Client-Cert-Verify`` (the
OpenSSL verification result of that certificate against our CA bundle, 0 when it verified; HAProxy's
``ssl_c_verify``). This ASGI middleware turns them into what the embedded TLS listener would have put in the scope
(``scope["client"]``, ``scope["scheme"]`` and the ``tls`` extension of ``chargers.daphne_tls``), so the handshake
applies the same profile rules (``chargers.handshake``) and the failure limits count the station's address. It
wraps HTTP too: Django's ``REMOTE_ADDR`` (the login lock-out, the per-address API key limit) and ``is_secure()``
are the client's, not the proxy's.

The headers are believed only from a connection that comes from one of ``OCPP_TRUSTED_PROXIES`` (CIDRs; none by
default) AND carries ``X-Proxy-Secret`` equal to ``OCPP_PROXY_SECRET`` (compared in constant time). The address alone
proves nothing: every local process connects from 127.0.0.1, and anyone can put a valid station certificate (it is
public) in a header. Without a configured secret nothing is believed (the settings refuse OCPP_TRUSTED_PROXIES
without one). Otherwise the headers, the secret among them, are stripped from the scope unread, so a direct
connection cannot claim TLS, a certificate or an address it does not have. From the proxy, the headers alone describe
the client's connection: without ``X-Forwarded-Proto: https`` it was plain ws:// (http://).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings

from chargers.daphne_tls import EXTENSION as TLS_EXTENSION
from chargers.daphne_tls import VERIFY_ERRORS

FORWARDED_PROTO = b"x-forwarded-proto"
FORWARDED_FOR = b"x-forwarded-for"
CLIENT_CERT = b"client-cert"
CLIENT_CERT_VERIFY = b"x-client-cert-verify"
PROXY_SECRET = b"x-proxy-secret"
PROXY_HEADERS = frozenset({FORWARDED_PROTO, FORWARDED_FOR, CLIENT_CERT, CLIENT_CERT_VERIFY, PROXY_SECRET})
LOG = logging.getLogger("chargers.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def proxy_trusted(address: str, cidrs: Iterable[str]) -> bool:
    """True when ``address`` (the TCP peer) is in one of the trusted proxies' networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(tuple(cidrs)))


def proxy_secret_matches(said: bytes | None, secret: str) -> bool:
    """True when the proxy's ``X-Proxy-Secret`` is ``secret`` (constant time); never with no secret configured."""
    if not secret or said is None:
        return False
    return hmac.compare_digest(said.strip(), secret.encode())


def forwarded_cert(value: bytes) -> tuple[str, str] | None:
    """(PEM, subject) of an RFC 9440 ``Client-Cert`` value (``:<base64 DER>:``), or None when it is not one or its
    subject cannot be read (a DER that loads may still hold a name that does not parse: ValueError on access)."""
    body = value.strip()
    if len(body) < 2 or body[:1] != b":" or body[-1:] != b":":
        return None
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(body[1:-1], validate=True))
        subject = cert.subject.rfc4514_string()
    except (binascii.Error, ValueError):
        return None
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), subject


def forwarded_tls(headers: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension for a station's connection to the proxy; None when it was not over TLS."""
    if headers.get(FORWARDED_PROTO, b"").strip().lower() not in (b"https", b"wss"):
        return None
    tls: dict[str, Any] = {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }
    raw = headers.get(CLIENT_CERT)
    if raw is None:
        return tls  # TLS without a client certificate (profile 2)
    # The verification result first: a certificate the proxy did not verify is refused as such, unparsed (it may be
    # anything a client cared to send). "-" marks a certificate presented but not passed on: refused by the handshake.
    verify = headers.get(CLIENT_CERT_VERIFY, b"").strip()
    if not verify.isdigit():
        tls["client_cert_chain"] = ["-"]
        tls["client_cert_error"] = "the proxy did not say whether the client certificate verified"
        return tls
    if code := int(verify):
        tls["client_cert_chain"] = ["-"]
        tls["client_cert_error"] = f"{VERIFY_ERRORS.get(code, f'X509 error {code}')} (at the proxy)"
        return tls
    cert = forwarded_cert(raw)
    if cert is None:
        tls["client_cert_chain"] = ["-"]
        tls["client_cert_error"] = "client certificate header unreadable"
        return tls
    tls["client_cert_chain"], tls["client_cert_name"] = [cert[0]], cert[1]
    return tls


def _forwarded_for(value: bytes) -> str:
    """The address the proxy itself added: the last of a comma-separated list (earlier ones are the client's say)."""
    last = value.decode("latin-1").rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return ""


def scope_from_proxy(scope: dict[str, Any], trusted_cidrs: Iterable[str], secret: str) -> dict[str, Any]:
    """``scope`` as the application sees it: the proxy headers stripped; from the trusted proxy (its address and its
    secret), their meaning applied."""
    headers = scope.get("headers", [])
    if not any(name in PROXY_HEADERS for name, _ in headers):
        return scope  # the common case, untouched: a direct connection that sent no proxy headers
    client = scope.get("client") or ("", 0)
    said = {name: value for name, value in headers if name in PROXY_HEADERS}
    scope = {**scope, "headers": [(name, value) for name, value in headers if name not in PROXY_HEADERS]}
    if not proxy_trusted(str(client[0]), trusted_cidrs):
        return scope
    if not proxy_secret_matches(said.get(PROXY_SECRET), secret):
        # From the proxy's address but not from the proxy: another process on its host, or a proxy misconfigured.
        LOG.warning(
            "proxy headers from %s without the proxy's secret (%s): ignored",
            client[0],
            "none sent" if PROXY_SECRET not in said else "wrong" if secret else "OCPP_PROXY_SECRET unset",
        )
        return scope
    tls = forwarded_tls(said)
    extensions = {k: v for k, v in (scope.get("extensions") or {}).items() if k != TLS_EXTENSION}
    if tls is not None:
        extensions[TLS_EXTENSION] = tls
    scope["extensions"] = extensions
    if scope.get("type") == "websocket":
        scope["scheme"] = "wss" if tls is not None else "ws"
    else:
        scope["scheme"] = "https" if tls is not None else "http"
    address = _forwarded_for(said.get(FORWARDED_FOR, b""))
    if address:
        scope["client"] = [address, 0]
    return scope


def request_client_address(request: Any) -> str | None:
    """The client's address for django-axes (``AXES_CLIENT_IP_CALLABLE``): ``REMOTE_ADDR``, which Django takes from
    the scope this middleware wrote (the client behind the trusted proxy); never a header the client wrote."""
    address = request.META.get("REMOTE_ADDR")
    return str(address) if address else None


class TrustedProxyMiddleware:
    """ASGI middleware: ``scope_from_proxy`` with ``settings.OCPP_TRUSTED_PROXIES`` and ``OCPP_PROXY_SECRET``, for
    every HTTP request and WebSocket."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") in ("http", "websocket"):
            scope = scope_from_proxy(scope, settings.OCPP_TRUSTED_PROXIES, settings.OCPP_PROXY_SECRET)
        return await self.app(scope, receive, send)
