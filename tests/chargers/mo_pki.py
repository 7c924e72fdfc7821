"""A third party's PKI for the Plug & Charge tests, built with ``cryptography`` alone (none of chargers.pki): a
mobility operator's (MO) sub-CA, contract certificates, an OCSP responder that answers with cryptography's
``OCSPResponseBuilder`` over real HTTP, and a contract-certificate provider. The CSMS is tested against these, so a
mistake in its own responder cannot hide one in its client."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "MO")])


def certificate(
    cn: str,
    *,
    issuer: Authority | None = None,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    valid_for: timedelta = timedelta(days=30),
    ocsp_url: str = "",
) -> Authority:
    """A certificate for ``cn`` signed by ``issuer`` (self-signed without one)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if ocsp_url:
        access = x509.AccessDescription(
            x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return Authority(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def mo_sub_ca() -> Authority:
    return mo_chain()[1]


def mo_chain(root: Authority | None = None, *, ocsp_url: str = "") -> tuple[Authority, Authority]:
    """An MO root CA and the sub-CA it issued (naming ``ocsp_url`` as its responder), which issues contracts."""
    root = root or certificate("MO Root CA", ca=True)
    return root, certificate("MO Sub-CA", issuer=root, ca=True, ocsp_url=ocsp_url)


def pem(*certs: x509.Certificate) -> str:
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode() for cert in certs)


def ocsp_request_data(cert: x509.Certificate, issuer: x509.Certificate, url: str) -> dict[str, str]:
    """OCPP's OCSPRequestData for ``cert``, its hashes computed by cryptography's own OCSP request builder."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": request.issuer_name_hash.hex(),
        "issuerKeyHash": request.issuer_key_hash.hex(),
        "serialNumber": format(request.serial_number, "X"),
        "responderURL": url,
    }


def _serve(post: Callable[[str, bytes], tuple[bytes, str]]) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (a free port, its own thread) answering each POST with ``post(path, body)``:
    the body and content type to send."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            out, content_type = post(self.path, self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Responder:
    """An OCSP responder for ``ca`` on 127.0.0.1. Paths choose how it answers: ``/ok`` signs with the CA's key,
    ``/delegated`` with an OCSP-signing certificate the CA issued, ``/wrong-key`` with a key that merely claims
    the CA's name, ``/slow`` waits for ``release`` (or 10 s) before answering, ``/garbage`` sends no OCSP."""

    ca: Authority
    statuses: dict[int, ocsp.OCSPCertStatus] = field(default_factory=dict)  # serial -> status; others unknown
    release: threading.Event = field(default_factory=threading.Event)
    asked: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def url(self, mode: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mode}"

    def answer(self, mode: str, request_der: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(request_der)
        now = datetime.now(UTC)
        status = self.statuses.get(request.serial_number, ocsp.OCSPCertStatus.UNKNOWN)
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.serial_number,
            request.hash_algorithm,
            status,
            now - timedelta(seconds=1),
            now + timedelta(hours=1),
            now - timedelta(days=1) if revoked else None,
            x509.ReasonFlags.key_compromise if revoked else None,
        )
        if mode == "delegated":
            delegate = certificate("MO OCSP signer", issuer=self.ca, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
            chain = [delegate.cert, self.ca.cert]  # the issuer too: a client may know neither
            signed = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, delegate.cert).certificates(chain)
            response = signed.sign(delegate.key, hashes.SHA256())
        elif mode == "wrong-key":
            impostor = certificate("MO Sub-CA")  # the CA's name, another key
            signed = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, impostor.cert).certificates([self.ca.cert])
            response = signed.sign(impostor.key, hashes.SHA256())
        else:
            signed = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca.cert).certificates([self.ca.cert])
            response = signed.sign(self.ca.key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)

    def start(self) -> Responder:
        def post(path: str, body: bytes) -> tuple[bytes, str]:
            mode = path.strip("/")
            self.asked.append(mode)
            if mode == "slow":
                self.release.wait(10)
            out = b"<html>not OCSP</html>" if mode == "garbage" else self.answer(mode, body)
            return out, "application/ocsp-response"

        self.server = _serve(post)
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ContractProvider:
    """A contract-certificate provider on 127.0.0.1 built on the MO sub-CA: for each relayed request it issues a
    contract certificate and returns it, with the request it saw, as an opaque base64 ``exiResponse`` (a real
    provider returns EXI; the CSMS relays without decoding either way)."""

    ca: Authority
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/contracts"

    def start(self) -> ContractProvider:
        def post(path: str, body: bytes) -> tuple[bytes, str]:
            request = json.loads(body)
            self.requests.append(request)
            contract = certificate("DEMOA1234567890", issuer=self.ca)
            payload = {
                "contract": contract.cert.public_bytes(serialization.Encoding.PEM).decode(),
                "for": request["exiRequest"],
            }
            exi = base64.b64encode(json.dumps(payload).encode()).decode()
            return json.dumps({"status": "Accepted", "exiResponse": exi}).encode(), "application/json"

        self.server = _serve(post)
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
