"""The TLS listener for security profiles 2 and 3, and the ASGI ``tls`` scope extension, for Daphne.

Daphne listens on Twisted endpoint strings; its ``ssl:`` endpoint neither requests a client certificate nor lets
the application see one. This module adds a ``vpptls:`` endpoint (``vpptls:port=8043:interface=H:backlog=N`` or
``vpptls:fileno=FD`` for an inherited ``--workers`` socket) that wraps Daphne's HTTP factory in Twisted's
``TLSMemoryBIOFactory`` with our own OpenSSL context:

* TLS 1.2 minimum (1.3 negotiated when the client offers it), ECDHE with AES-GCM or ChaCha20-Poly1305 only (the
  OCPP 2.0.1 profile-2/3 suites and their TLS 1.3 counterparts), no compression, no renegotiation;
* a client certificate is *requested*, not required (profile-2 stations have none), and verified against the CA
  bundle; a failed verification does not abort the TLS handshake but is recorded, so the OCPP handshake can refuse
  with an HTTP status and a logged reason instead of a bare TLS alert.

Every WebSocket/HTTP scope served over it carries the ASGI TLS extension (``scope["extensions"]["tls"]``:
``client_cert_chain`` as PEM strings, leaf first; ``client_cert_name``; ``client_cert_error``, None when the chain
verified; ``tls_version``) and ``scheme`` ``wss``/``https``. Installed by ``vpp.serve`` before Daphne starts.
"""

from __future__ import annotations

import os
import socket
import weakref
from typing import Any

from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

EXTENSION = "tls"
PREFIX = "vpptls:"
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
)
# OpenSSL's X509_V_ERR_* codes a station is likely to meet, for the logged reason; others are logged by number.
VERIFY_ERRORS = {
    9: "certificate not yet valid",
    10: "certificate expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "issuer not trusted",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    26: "unsuitable certificate purpose",
}

# The first verification error of each TLS connection (OpenSSL reports one per failing check and chain depth).
_verify_errors: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _verify(conn: Any, cert: Any, errnum: int, depth: int, ok: int) -> bool:
    if not ok and conn not in _verify_errors:
        _verify_errors[conn] = f"{VERIFY_ERRORS.get(errnum, f'X509 error {errnum}')} (depth {depth})"
    return True  # let the TLS handshake finish; the OCPP handshake refuses with a status and a reason


@implementer(IOpenSSLContextFactory)
class ServerContextFactory:
    """An old-style Twisted context factory (``getContext``): one OpenSSL context shared by every connection."""

    def __init__(self, *, cert_file: str, key_file: str, ca_file: str) -> None:
        from OpenSSL import SSL, crypto

        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
        ctx.set_cipher_list(CIPHERS)
        ctx.use_certificate_chain_file(cert_file)
        ctx.use_privatekey_file(key_file)
        ctx.check_privatekey()
        ctx.load_verify_locations(ca_file)
        with open(ca_file, "rb") as handle:
            names = [
                crypto.X509.from_cryptography(cert).get_subject() for cert in _pem_certificates(handle.read())
            ]  # fmt: skip
        ctx.set_client_ca_list(names)  # which CAs a station should pick its certificate from
        ctx.set_verify(SSL.VERIFY_PEER, _verify)
        ctx.set_session_id(b"vpp-ocpp")  # required with client verification and the session cache
        self._context = ctx

    def getContext(self) -> Any:
        return self._context


def _pem_certificates(data: bytes) -> list[Any]:
    from cryptography import x509

    return x509.load_pem_x509_certificates(data)


class TlsServerEndpoint:
    """A Twisted stream server endpoint: TCP (a new port or an inherited socket) with our TLS on top."""

    def __init__(self, reactor: Any, context_factory: ServerContextFactory, options: dict[str, str]) -> None:
        self.reactor = reactor
        self.context_factory = context_factory
        self.options = options

    def listen(self, factory: Any) -> Any:
        from twisted.internet import defer
        from twisted.protocols.tls import TLSMemoryBIOFactory

        # ServerContextFactory provides IOpenSSLContextFactory (zope @implementer, which mypy cannot see).
        wrapped = TLSMemoryBIOFactory(self.context_factory, False, factory)  # type: ignore[arg-type]
        try:
            if "fileno" in self.options:
                fd = int(self.options["fileno"])
                # As Twisted's own fd: endpoint does: adoptStreamPort needs a non-blocking socket (else its accept
                # loop blocks the reactor once the queue is empty) and dups it, so the inherited fd is closed after.
                os.set_blocking(fd, False)
                port = self.reactor.adoptStreamPort(fd, socket.AF_INET, wrapped)
                os.close(fd)
            else:
                port = self.reactor.listenTCP(
                    int(self.options["port"]),
                    wrapped,
                    backlog=int(self.options.get("backlog", "50")),
                    interface=self.options.get("interface", ""),
                )
        except Exception:
            return defer.fail()
        return defer.succeed(port)


def endpoint_parse(description: str) -> dict[str, str]:
    """``vpptls:k=v:k=v`` -> {k: v}."""
    body = description.removeprefix(PREFIX)
    return dict(part.split("=", 1) for part in body.split(":") if part)


def tls_scope(transport: Any) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection, or None when it is not over TLS."""
    from twisted.internet.interfaces import ISSLTransport

    if not ISSLTransport.providedBy(transport):
        return None
    from cryptography.hazmat.primitives import serialization

    conn = transport.getHandle()
    leaf = conn.get_peer_certificate(as_cryptography=True)
    chain: list[str] = []
    name = None
    if leaf is not None:
        certs = [leaf, *[c for c in (conn.get_peer_cert_chain(as_cryptography=True) or []) if c != leaf]]
        chain = [c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs]
        name = leaf.subject.rfc4514_string()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": _verify_errors.get(conn) if leaf is not None else None,
        "tls_version": conn.get_protocol_version(),
        "cipher_suite": None,  # the IANA number is not exposed by pyOpenSSL; the name is logged on demand
    }


def install(*, cert_file: str, key_file: str, ca_file: str) -> None:
    """Teach this process's Daphne the ``vpptls:`` endpoint and the ``tls`` scope extension."""
    import daphne.server
    from daphne.server import Server

    context_factory = ServerContextFactory(cert_file=cert_file, key_file=key_file, ca_file=ca_file)
    original_from_string = daphne.server.serverFromString
    original_create = Server.create_application

    def server_from_string(reactor: Any, description: str) -> Any:
        if description.startswith(PREFIX):
            return TlsServerEndpoint(reactor, context_factory, endpoint_parse(description))
        return original_from_string(reactor, description)

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        tls = tls_scope(getattr(protocol, "transport", None))
        if tls is not None:
            scope.setdefault("extensions", {})[EXTENSION] = tls
            scope["scheme"] = "wss" if scope.get("type") == "websocket" else "https"
        return original_create(self, protocol, scope)

    daphne.server.serverFromString = server_from_string
    Server.create_application = create_application
