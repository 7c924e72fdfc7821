"""Where the PKI keeps its files: CA private keys behind ``KeyStore``, certificates (public) as PEM files.

The encrypted-file store is the embedded default: each key is a PKCS#8 PEM encrypted with ``BestAvailableEncryption``
under one passphrase from ``PKI_PASSPHRASE`` / ``PKI_PASSPHRASE_FILE``, or generated once into ``var/`` (0600).
An HSM (PKCS#11) store would implement ``KeyStore`` and return a key object that signs inside the token; nothing
outside this module reads key files.
"""

from __future__ import annotations

import os
import secrets
from functools import cache
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

PASSPHRASE_FILE_NAME = "pki_passphrase"  # noqa: S105 - a file name, not a secret


class PkiError(Exception):
    """The PKI cannot do what was asked (not initialised, unknown certificate, bad passphrase, ...)."""


class KeyStore(Protocol):
    def key_exists(self, name: str) -> bool: ...

    def key_store(self, name: str, key: ec.EllipticCurvePrivateKey) -> None: ...

    def key_load(self, name: str) -> ec.EllipticCurvePrivateKey: ...


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new or replaced file readable by its owner only (0600 from creation, not chmod after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def passphrase() -> bytes:
    if settings.PKI_PASSPHRASE:
        return settings.PKI_PASSPHRASE.encode()
    path = (
        Path(settings.PKI_PASSPHRASE_FILE) if settings.PKI_PASSPHRASE_FILE else settings.VAR_DIR / PASSPHRASE_FILE_NAME
    )
    if not path.exists():
        if settings.PKI_PASSPHRASE_FILE:  # a configured file that is missing is a mistake, not a first start
            raise PkiError(f"PKI_PASSPHRASE_FILE {path} does not exist")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process generated it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()


class EncryptedFileKeyStore:
    """CA keys as encrypted PKCS#8 PEM files ``<name>.key.pem`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.key.pem"

    def key_exists(self, name: str) -> bool:
        return self._path(name).exists()

    def key_store(self, name: str, key: ec.EllipticCurvePrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase()),
        )
        write_private(self._path(name), pem)

    def key_load(self, name: str) -> ec.EllipticCurvePrivateKey:
        path = self._path(name)
        if not path.exists():
            raise PkiError(f"no key {name} in {self.directory}: run `manage.py pki init`")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase())
        except (ValueError, TypeError) as exc:
            raise PkiError(f"cannot decrypt {path}: wrong PKI passphrase?") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{path} is not an EC key")
        return key


def pki_dir() -> Path:
    return Path(settings.PKI_DIR)


def key_store() -> KeyStore:
    return EncryptedFileKeyStore(pki_dir())


def cert_path(name: str) -> Path:
    return pki_dir() / f"{name}.pem"


def cert_store(name: str, cert: x509.Certificate) -> None:
    path = cert_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def cert_load(name: str) -> x509.Certificate:
    path = cert_path(name)
    if not path.exists():
        raise PkiError(f"no certificate {name} in {path.parent}: run `manage.py pki init`")
    return x509.load_pem_x509_certificate(path.read_bytes())


@cache
def _cached_key(directory: str, name: str) -> ec.EllipticCurvePrivateKey:
    return key_store().key_load(name)


def signing_key(name: str) -> ec.EllipticCurvePrivateKey:
    """The CA key, decrypted once per process (each decryption runs the passphrase KDF)."""
    return _cached_key(str(pki_dir()), name)


def signing_key_forget() -> None:
    _cached_key.cache_clear()
