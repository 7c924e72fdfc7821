"""Where the PKI keeps CA private keys (behind ``KeyStore``) and certificates (public, PEM files).

Two stores, chosen by ``PKI_PKCS11_MODULE``:

- unset (the embedded default): encrypted files. Each key is a PKCS#8 PEM encrypted with ``BestAvailableEncryption``
  under one passphrase from ``PKI_PASSPHRASE`` / ``PKI_PASSPHRASE_FILE``, or generated once into ``var/`` (0600) in
  development only (``PKI_PASSPHRASE_GENERATE``): in production a passphrase beside the keys is refused, and
  ``check --deploy`` reports one (``chargers.checks``).
- set: a PKCS#11 token (``chargers.pki.hsm``): keys generated in the token, never extractable, signing in the token.
  A token that cannot be used is a ``PkiError``, never a quiet fall back to files.

Either way a store hands out a cryptography ``EllipticCurvePrivateKey`` that signs; nothing outside this module and
``hsm`` touches key files or token objects.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from functools import cache
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from chargers.pki.errors import PkiError

PASSPHRASE_FILE_NAME = "pki_passphrase"  # noqa: S105 - a file name, not a secret
LOG = logging.getLogger("chargers.pki")


class KeyStore(Protocol):
    def describe(self) -> str:
        """Where the keys are, for operators (``pki status``) and error messages."""
        ...

    def key_exists(self, name: str) -> bool: ...

    def key_generate(self, name: str, *, replace: bool = False) -> ec.EllipticCurvePublicKey:
        """A new key ``name`` made and kept by the store; its public key. Refused if one exists, unless ``replace``."""
        ...

    def signing_key(self, name: str) -> ec.EllipticCurvePrivateKey:
        """Key ``name`` as cryptography's builders take it: its ``sign`` may run in a token that never shows it."""
        ...


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
        if not settings.PKI_PASSPHRASE_GENERATE:  # production: a passphrase beside the keys protects nothing
            message = (
                "no PKI passphrase is generated next to the CA keys in production: set PKI_PASSPHRASE_FILE to a file "
                "outside VPP_VAR_DIR (or PKI_PASSPHRASE), or keep the keys in an HSM (PKI_PKCS11_MODULE)"
            )
            LOG.error("%s", message)
            raise PkiError(message)
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

    def describe(self) -> str:
        return f"encrypted files in {self.directory}"

    def key_exists(self, name: str) -> bool:
        return self._path(name).exists()

    def key_generate(self, name: str, *, replace: bool = False) -> ec.EllipticCurvePublicKey:
        if self.key_exists(name) and not replace:
            raise PkiError(f"a key {name} already exists in {self.directory}")
        key = ec.generate_private_key(ec.SECP256R1())
        self.key_store(name, key)
        _cached_key.cache_clear()
        return key.public_key()

    def signing_key(self, name: str) -> ec.EllipticCurvePrivateKey:
        """Decrypted once per process (each decryption runs the passphrase KDF)."""
        return _cached_key(str(self.directory), name)

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


def pkcs11_pin() -> str:
    """The token's user PIN, from ``PKI_PKCS11_PIN`` or the file ``PKI_PKCS11_PIN_FILE`` (never from argv)."""
    if settings.PKI_PKCS11_PIN and settings.PKI_PKCS11_PIN_FILE:
        raise PkiError("set one of PKI_PKCS11_PIN and PKI_PKCS11_PIN_FILE, not both")
    if settings.PKI_PKCS11_PIN:
        return str(settings.PKI_PKCS11_PIN)
    if not settings.PKI_PKCS11_PIN_FILE:
        raise PkiError("PKI_PKCS11_MODULE is set: set PKI_PKCS11_PIN_FILE (or PKI_PKCS11_PIN) to the token's user PIN")
    path = Path(settings.PKI_PKCS11_PIN_FILE)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise PkiError(f"cannot read PKI_PKCS11_PIN_FILE {path}: {exc.strerror}") from exc


def key_store() -> KeyStore:
    """The configured store: the PKCS#11 token when ``PKI_PKCS11_MODULE`` is set, else encrypted files."""
    if not settings.PKI_PKCS11_MODULE:
        return EncryptedFileKeyStore(pki_dir())
    if not settings.PKI_PKCS11_TOKEN_LABEL:
        LOG.error("PKI_PKCS11_MODULE is set without PKI_PKCS11_TOKEN_LABEL")
        raise PkiError("PKI_PKCS11_MODULE is set: set PKI_PKCS11_TOKEN_LABEL to the label of the token to use")
    try:
        pin = pkcs11_pin()
    except PkiError as exc:
        LOG.error("%s", exc)
        raise
    from chargers.pki import hsm  # only a configured token loads python-pkcs11 and the vendor's library

    return hsm.store(
        module=str(settings.PKI_PKCS11_MODULE),
        token_label=str(settings.PKI_PKCS11_TOKEN_LABEL),
        pin=pin,
        timeout_s=float(settings.PKI_PKCS11_TIMEOUT_S),
    )


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
    return EncryptedFileKeyStore(Path(directory)).key_load(name)


def signing_key(name: str) -> ec.EllipticCurvePrivateKey:
    """CA key ``name`` from the configured store, ready for a builder's ``sign``."""
    return key_store().signing_key(name)


def signing_key_forget() -> None:
    """Forget decrypted keys and close token sessions (after ``pki init``, and between tests)."""
    _cached_key.cache_clear()
    hsm = sys.modules.get("chargers.pki.hsm")
    if hsm is not None:
        hsm.stores_close()
