"""Signed-update fixtures built on `cryptography` and the standard library: CAs, signing certificates, signatures,
and a local HTTP server serving packages (what a firmware repository would be)."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "V2G VPP test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _sign_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> str:
        path.write_bytes(self.pem())
        return str(path)

    def crl(self, *revoked: x509.Certificate, updated_days_ago: float = 0.0, valid_days: float = 1.0) -> bytes:
        """This CA's CRL (DER, RFC 5280) listing ``revoked``: last updated ``updated_days_ago``, next update
        ``valid_days`` after that."""
        return make_crl(self.cert.subject, self.key, *revoked, updated_days_ago=updated_days_ago, valid_days=valid_days)


def make_crl(
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *revoked: x509.Certificate,
    updated_days_ago: float = 0.0,
    valid_days: float = 1.0,
) -> bytes:
    """A CRL naming ``issuer`` signed with ``key`` (which need not be the issuer's: a forgery), DER."""
    updated = datetime.now(UTC) - timedelta(days=updated_days_ago)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(updated)
        .next_update(updated + timedelta(days=valid_days))
    )
    for cert in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(updated)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def make_ca(cn: str = "V2G Firmware Signing CA") -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Ca(key, cert)


@dataclass
class Signer:
    key: PrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, data: bytes) -> str:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return base64.b64encode(self.key.sign(data)).decode()
        return base64.b64encode(self.key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def make_signer(ca: Ca, *, algorithm: str = "ecdsa", valid_days: tuple[int, int] = (-1, 365)) -> Signer:
    """A code-signing certificate issued by ``ca``; ``valid_days`` = (not before, not after) relative to now."""
    key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"firmware signer ({algorithm})"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=valid_days[0]))
        .not_valid_after(now + timedelta(days=valid_days[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Signer(key, cert)


@dataclass
class PackageServer:
    """Serves ``files`` (path -> bytes) over HTTP on 127.0.0.1; ``requests`` lists the paths asked for."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None

    def start(self) -> PackageServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server API names it
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def update_firmware(request_id: int, location: str, *, signature: str, cert_pem: str) -> dict[str, Any]:
    """An UpdateFirmware payload (camelCase, as on the wire) to be retrieved now."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "requestId": request_id,
        "firmware": {
            "location": location,
            "retrieveDateTime": now,
            "signature": signature,
            "signingCertificate": cert_pem,
        },
    }
