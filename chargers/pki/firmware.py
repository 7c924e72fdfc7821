"""Firmware and configuration-bundle signing (OCPP 2.0.1 L01 UpdateFirmware ``signature``/``signingCertificate``).

A firmware-signing certificate is issued by the CPO sub-CA (through ``Ca.certificate_sign``: the CA key never leaves
its store) for a key generated here and written only encrypted: ECDSA P-256, keyUsage digitalSignature, extended key
usage codeSigning, so neither a station nor a server certificate of the same CA can sign firmware (the edge agent
checks the usage, ``edge_agent.signing``). A package's signature is ECDSA P-256 with SHA-256 (DER) or Ed25519 over
the package's bytes, base64: what UpdateFirmware carries and the agent verifies against its trust anchor (the CA
bundle).
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from chargers.pki import ca, issue, storage
from chargers.pki.storage import PkiError

SIGNING_VALIDITY = timedelta(days=2 * 365)
MIN_PASSPHRASE = 12
SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def firmware_signing_cert_issue(
    *, common_name: str, organisation: str = "", key_file: Path, cert_file: Path, passphrase: bytes
) -> x509.Certificate:
    """A new signing key (written encrypted with ``passphrase``, 0600) and its certificate from the sub-CA
    (``cert_file``: the certificate then the sub-CA's, the chain a station is sent as ``signingCertificate``)."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise PkiError(f"the signing key's passphrase must have at least {MIN_PASSPHRASE} characters")
    issuer = ca.sub_ca()
    key = ec.generate_private_key(ca.CURVE)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    cert = issue.firmware_signing_certificate_issue(
        public_key=key.public_key(), subject=x509.Name(attributes), validity=SIGNING_VALIDITY
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(passphrase)
    )
    storage.write_private(key_file, encrypted)
    pem = serialization.Encoding.PEM
    cert_file.write_bytes(cert.public_bytes(pem) + issuer.cert.public_bytes(pem))
    return cert


def signing_key_load(key_file: Path, passphrase: bytes | None) -> SigningKey:
    """The signing key from its PEM file (encrypted with ``passphrase``): ECDSA P-256 or Ed25519."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=passphrase or None)
    except (OSError, ValueError, TypeError) as exc:  # unreadable, wrong passphrase, passphrase missing or not needed
        raise PkiError(f"cannot load the signing key {key_file}: {exc}") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise PkiError(f"unsupported signing key {type(key).__name__} (ECDSA P-256 or Ed25519)")


def signing_chain_load(cert_file: Path, key: SigningKey) -> str:
    """The PEM chain of ``cert_file`` (signing certificate first), once its certificate is ``key``'s."""
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read the signing certificate {cert_file}: {exc}") from exc
    pem = serialization.Encoding.PEM
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(pem, spki) != key.public_key().public_bytes(pem, spki):
        raise PkiError(f"the signing certificate {cert_file} is not the signing key's")
    return "".join(cert.public_bytes(pem).decode("ascii") for cert in chain)


def package_sign(*, package: bytes, key: SigningKey) -> str:
    """The base64 signature over ``package``: Ed25519, or ECDSA P-256 with SHA-256 (DER)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(package)
    else:
        signature = key.sign(package, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")
