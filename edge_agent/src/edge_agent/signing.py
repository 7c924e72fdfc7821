"""Signed packages (firmware, configuration bundles): the signing certificate's chain and the signature.

A package is trusted when its signing certificate chains, through any intermediates sent with it, to one of the
agent's configured firmware-signing trust anchors, every certificate on the way is within its validity period,
and the signature over the package's bytes verifies with the signing certificate's key: ECDSA P-256 with SHA-256
(DER signature) or Ed25519. Pure functions, no I/O but reading the anchor file: the caller decides what a refusal
means (OCPP status, security event, exit code). Whether the signing certificate has been revoked is
``edge_agent.revocation``'s check (a CRL, fetched), made by the callers before anything is installed.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

MAX_CHAIN = 4  # intermediates followed before giving up (a loop or a very long chain is refused, not walked)


class CertificateRejected(Exception):
    """The signing certificate is malformed, expired or not issued under a trust anchor."""


class SignatureRejected(Exception):
    """The signature does not verify over the package with the signing certificate's key."""


class NoTrustAnchor(Exception):
    """No firmware-signing trust anchor is configured or readable: nothing can be verified."""


def load_trust_anchors(path: str | Path) -> list[x509.Certificate]:
    """The PEM certificates in ``path``; read on every use, so replacing the file needs no restart."""
    if not str(path):
        raise NoTrustAnchor("no firmware-signing trust anchor configured")
    try:
        anchors = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise NoTrustAnchor(f"cannot read the firmware-signing trust anchor {path}: {exc}") from exc
    return anchors


def _within_validity(cert: x509.Certificate, now: datetime, role: str) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateRejected(f"{role} certificate not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise CertificateRejected(f"{role} certificate expired {cert.not_valid_after_utc.isoformat()}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_leaf_usage(cert: x509.Certificate) -> None:
    # Extensions are optional; when present they must allow signing code (a TLS server certificate from the same
    # CA must not be able to sign firmware).
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise CertificateRejected("signing certificate's key usage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
        raise CertificateRejected("signing certificate's extended key usage lacks codeSigning")


def check_signing_certificate(pem: str, anchors: list[x509.Certificate], *, now: datetime) -> x509.Certificate:
    """The signing certificate (the first in ``pem``) once its chain to an anchor holds at ``now``."""
    return signing_chain(pem, anchors, now=now)[0]


def signing_chain(
    pem: str, anchors: list[x509.Certificate], *, now: datetime
) -> tuple[x509.Certificate, x509.Certificate]:
    """(signing certificate, its issuer) once the chain to an anchor holds at ``now``. The issuer is an anchor or an
    intermediate that chains to one: the key its CRL must verify with (``edge_agent.revocation``)."""
    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CertificateRejected(f"signing certificate is not PEM X.509: {exc}") from exc
    leaf, intermediates = chain[0], chain[1:]
    _check_leaf_usage(leaf)
    current, issuer = leaf, None
    for _ in range(MAX_CHAIN + 1):
        _within_validity(current, now, "signing" if current is leaf else "intermediate")
        anchor = next((a for a in anchors if _issued_by(current, a)), None)
        if anchor is not None:
            _within_validity(anchor, now, "trust anchor")
            return leaf, issuer or anchor
        parent = next((c for c in intermediates if _is_ca(c) and _issued_by(current, c)), None)
        if parent is None:
            raise CertificateRejected(f"signing certificate not issued under a trust anchor (issuer {current.issuer})")
        issuer = issuer or parent
        current = parent
    raise CertificateRejected("certificate chain too long")


def verify_signature(package: bytes, signature_b64: str, cert: x509.Certificate) -> None:
    """Raise SignatureRejected unless ``signature_b64`` signs ``package`` with ``cert``'s key."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRejected("signature is not base64") from exc
    key = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, package)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            key.verify(signature, package, ec.ECDSA(hashes.SHA256()))
        else:
            raise SignatureRejected(f"unsupported signing key {type(key).__name__} (ECDSA P-256 or Ed25519)")
    except InvalidSignature as exc:
        raise SignatureRejected("signature does not match the package") from exc


def verify_package(
    package: bytes, *, signature_b64: str, certificate_pem: str, anchors: list[x509.Certificate], now: datetime
) -> tuple[x509.Certificate, x509.Certificate]:
    """Both checks, certificate first; returns (signing certificate, its issuer) for the revocation check."""
    cert, issuer = signing_chain(certificate_pem, anchors, now=now)
    verify_signature(package, signature_b64, cert)
    return cert, issuer
