"""The profile-3 certificate checks the handshake makes on top of the TLS layer's chain verification.

The TLS listener (``chargers.daphne_tls``) requests a client certificate, verifies its chain against our CA bundle
and puts the outcome in the ASGI scope's ``tls`` extension (``client_cert_chain``, ``client_cert_error``). The
handshake then needs what only the CSMS knows: the certificate names this station, is still valid now, and is one
the register (``PkiCertificate``) knows and has not revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ClientCert:
    common_name: str
    serial: str  # lower-case hex, as the register stores it
    not_before: datetime
    not_after: datetime


def client_cert_from_scope(tls: dict[str, Any] | None) -> tuple[ClientCert | None, str]:
    """(the TLS client certificate, "") when one was presented and its chain verified; else (None, why not)."""
    if tls is None:
        return None, "not over TLS"
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None, "no client certificate"
    if tls.get("client_cert_error"):
        return None, f"client certificate not verified: {tls['client_cert_error']}"
    try:
        cert = x509.load_pem_x509_certificate(chain[0].encode("ascii"))
    except ValueError:
        return None, "client certificate unreadable"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return ClientCert(
        common_name, format(cert.serial_number, "x"), cert.not_valid_before_utc, cert.not_valid_after_utc
    ), ""


def client_cert_refusal(
    *, station_id: str, cert: ClientCert, now: datetime, registered: tuple[str, bool] | None
) -> str:
    """Why this verified certificate may not open ``station_id``'s socket, or "" when it may.

    ``registered``: the register's (subject CN, revoked?) for the certificate's serial, None when unknown.
    """
    if cert.common_name != station_id:
        return f"certificate CN {cert.common_name!r} is not the station id"
    if not cert.not_before <= now <= cert.not_after:
        return "certificate outside its validity period"
    if registered is None:
        return f"certificate {cert.serial} was not issued by this CSMS's PKI register"
    subject_cn, revoked = registered
    if revoked:
        return f"certificate {cert.serial} is revoked"
    if subject_cn != station_id:
        return f"certificate {cert.serial} was issued for another station"
    return ""
