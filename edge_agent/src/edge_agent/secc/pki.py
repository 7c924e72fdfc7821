"""The SECC's TLS towards the car, from the project's V2G PKI, laid out where Josev reads it. No Josev here.

ISO 15118-20 runs over TLS 1.3 with both sides authenticated. The charger shows its SECC certificate chain
(``manage.py pki secc-cert``: a serverAuth leaf from the CPO sub-CA; the car trusts the V2G root); the car shows
its vehicle certificate from its maker's (OEM) PKI, which the charger checks against the OEM roots it is given.

Josev reads fixed names under its ``PKI_PATH`` (``iso15118_2/certs/cpoCertChain.pem``, ``oemRootCACert.pem``,
``iso15118_2/private_keys/seccLeaf.key`` and ``seccLeafPassword.txt``). ``josev_pki_dir`` writes them into a
directory of the agent's (0700; key and passphrase 0600, as ``[tls]`` keeps the OCPP key) after checking that the
files make sense, so that a mistake stops the agent at start-up with a clear error: Josev itself, when it cannot
load them, logs it and serves the car over plain TCP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

CERTS = "iso15118_2/certs"
KEYS = "iso15118_2/private_keys"


class SeccTlsError(ValueError):
    """The SECC's certificate, key or car trust anchors cannot serve a TLS session."""


@dataclass(frozen=True)
class SeccTlsFiles:
    cert_file: Path  # the SECC chain, PEM: leaf + CPO sub-CA (pki secc-cert --out-cert)
    key_file: Path  # its key, PEM (encrypted PKCS#8 from pki secc-cert --out-key)
    ev_ca_file: Path  # the OEM root(s) whose vehicle certificates the charger accepts, PEM
    key_passphrase: str = field(default="", repr=False)


def _certs(path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SeccTlsError(f"{what} {path}: {exc}") from exc
    if not certs:
        raise SeccTlsError(f"{what} {path}: no certificate")
    return certs


def check(files: SeccTlsFiles, *, now: datetime | None = None) -> x509.Certificate:
    """The SECC leaf, once the chain, key and trust anchors are usable for a TLS server; else SeccTlsError."""
    now = now or datetime.now(UTC)
    leaf = _certs(files.cert_file, "iso15118.cert_file")[0]
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise SeccTlsError(
            f"iso15118.cert_file: the SECC certificate is not valid now (until {leaf.not_valid_after_utc})"
        )
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise SeccTlsError(
            "iso15118.cert_file: not a TLS server certificate (no serverAuth): `pki secc-cert` issues one"
        )
    try:
        key = serialization.load_pem_private_key(
            files.key_file.read_bytes(), password=files.key_passphrase.encode() or None
        )
    except (OSError, ValueError, TypeError) as exc:  # TypeError: encrypted without a passphrase, or the reverse
        raise SeccTlsError(f"iso15118.key_file {files.key_file}: {exc}") from exc
    if key.public_key() != leaf.public_key():
        raise SeccTlsError("iso15118.key_file is not the key of iso15118.cert_file")
    for root in _certs(files.ev_ca_file, "iso15118.ev_ca_file"):
        constraints = root.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise SeccTlsError(f"iso15118.ev_ca_file: {root.subject.rfc4514_string()} is not a CA")
    return leaf


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # an older file keeps its mode through O_CREAT


def josev_pki_dir(files: SeccTlsFiles, directory: Path) -> Path:
    """Check ``files`` and write them where Josev reads them under ``directory``; returns it (Josev's PKI_PATH)."""
    check(files)
    for sub in (CERTS, KEYS):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for d in (directory, directory / "iso15118_2", directory / CERTS, directory / KEYS):
        os.chmod(d, 0o700)
    _write(directory / CERTS / "cpoCertChain.pem", files.cert_file.read_bytes(), 0o644)
    _write(directory / CERTS / "oemRootCACert.pem", files.ev_ca_file.read_bytes(), 0o644)
    _write(directory / KEYS / "seccLeaf.key", files.key_file.read_bytes(), 0o600)
    _write(directory / KEYS / "seccLeafPassword.txt", files.key_passphrase.encode(), 0o600)  # empty: no passphrase
    return directory
