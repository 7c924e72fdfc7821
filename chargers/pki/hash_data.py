"""OCPP's CertificateHashDataType for a certificate: how stations name installed certificates (M03/M04).

The hashes are OCSP's CertID (RFC 6960 4.1.1), which OCPP copies: the issuer's DER-encoded name and the issuer's
public key bits, hashed. cryptography's OCSP request builder computes exactly that, so it is used here rather than a
second hand-written encoding.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}


def certificate_hash_data(
    *, cert: x509.Certificate, issuer: x509.Certificate, algorithm: str = "SHA256"
) -> dict[str, str]:
    """``cert``'s CertificateHashData (``issuer``: the certificate that signed it; a root's is itself)."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, HASHES[algorithm]()).build()
    return {
        "hashAlgorithm": algorithm,
        "issuerNameHash": request.issuer_name_hash.hex(),
        "issuerKeyHash": request.issuer_key_hash.hex(),
        "serialNumber": serial_text(cert.serial_number),
    }


def serial_text(serial: int) -> str:
    """OCPP's serialNumber: hexadecimal without "0x" and without leading zeroes."""
    return format(serial, "x")


def hash_data_key(data: dict[str, str]) -> tuple[str, str, str, str]:
    """A comparable key of a CertificateHashData: stations vary in the case of hex digits and in leading zeroes."""
    return (
        data["hashAlgorithm"],
        data["issuerNameHash"].lower(),
        data["issuerKeyHash"].lower(),
        data["serialNumber"].lower().removeprefix("0x").lstrip("0") or "0",
    )
