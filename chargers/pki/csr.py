"""The checks a station's certificate signing request (OCPP 2.0.1 A02/A03 SignCertificate) must pass before the
CPO sub-CA signs a certificate for its key.

Pure: no database. The caller says which station sent it and which organisation owns it; whether another station
bears the CN the CSR claims is the caller's to look up (``CsrRefused.claimed_cn``).

What is accepted, and why:

- **Keys**: EC on secp256r1 (P-256) or secp384r1 (P-384), the curves OCPP 2.0.1's TLS suites and ISO 15118's V2G
  PKI use (our own CA keys are P-256); RSA of 2048 to 4096 bits with a public exponent of at least 65537, which OCPP
  2.0.1 also allows for the station certificate (TLS_ECDHE_RSA suites). Smaller RSA keys, other curves (P-192,
  P-224, P-521, Brainpool), DSA and Ed25519/Ed448 are refused: either too weak or no OCPP TLS suite uses them.
  The upper RSA bound keeps the signing and the handshake checks cheap; the schema's 5500-character CSR holds
  RSA-4096 comfortably.
- **Signature**: valid (the station holds the private key) and made with SHA-256, -384 or -512 (no SHA-1).
- **Subject**: exactly one CN, equal to the station id (A00.FR.417: the station certificate's CN is the
  station's identity, which the profile-3 handshake compares with the URL); an O, when given and when the CSMS
  knows the station's owner, equal to the owner's name.
- **Extensions**: none asking for a CA (BasicConstraints CA:TRUE, keyCertSign or cRLSign). Nothing else from the
  CSR is copied into the certificate (the issuer sets subject, key usage, EKU and validity), so other requested
  extensions are ignored rather than refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

MAX_CSR_CHARS = 5500  # SignCertificateRequest.csr maxLength (2.0.1 and 2.1)
EC_CURVES = {"secp256r1", "secp384r1"}
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 4096
RSA_MIN_EXPONENT = 65537
SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

# statusInfo.reasonCode values (OCPP 2.1 Part 2 appendices, reason codes; the 2.0.1 field is free text)
INVALID_CSR = "InvalidCSR"

StationKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class CsrRefused(Exception):
    """The CSR may not be signed: ``reason`` says why (for the station's statusInfo and the security event)."""

    def __init__(self, reason: str, *, claimed_cn: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.claimed_cn = claimed_cn  # the CN the CSR asked for, when it is not the station's own


@dataclass(frozen=True)
class CheckedCsr:
    csr: x509.CertificateSigningRequest
    public_key: StationKey
    organisation: str  # the O the certificate gets: the owner's name, or "" when the CSMS knows no owner


def csr_check(*, pem: str, station_id: str, organisation: str) -> CheckedCsr:
    """``pem`` checked as a CSR from ``station_id`` (owned by ``organisation``, "" when unknown); raises CsrRefused."""
    if len(pem) > MAX_CSR_CHARS:
        raise CsrRefused(f"CSR longer than {MAX_CSR_CHARS} characters")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8", "surrogatepass"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRefused(f"not a PEM certificate signing request ({_short(exc)})") from exc
    key = _key_check(csr)
    _signature_check(csr)
    _subject_check(csr, station_id=station_id, organisation=organisation)
    _extensions_check(csr)
    return CheckedCsr(csr, key, organisation)


def _key_check(csr: x509.CertificateSigningRequest) -> StationKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRefused(f"unreadable or unsupported public key ({_short(exc)})") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise CsrRefused(f"EC key on {key.curve.name}: only secp256r1 or secp384r1")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise CsrRefused(f"RSA key of {key.key_size} bits: {RSA_MIN_BITS} to {RSA_MAX_BITS} only")
        exponent = key.public_numbers().e
        if exponent < RSA_MIN_EXPONENT or exponent % 2 == 0:
            raise CsrRefused(f"RSA public exponent {exponent}: an odd one of at least {RSA_MIN_EXPONENT} only")
        return key
    raise CsrRefused(f"{type(key).__name__.removesuffix('PublicKey') or 'unknown'} key: only EC (P-256/P-384) or RSA")


def _signature_check(csr: x509.CertificateSigningRequest) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise CsrRefused(f"unsupported signature algorithm ({_short(exc)})") from exc
    if not isinstance(algorithm, SIGNATURE_HASHES):
        name = algorithm.name if algorithm is not None else "none"
        raise CsrRefused(f"signature hash {name}: SHA-256, SHA-384 or SHA-512 only")
    if not csr.is_signature_valid:
        raise CsrRefused("the CSR's signature does not verify with its public key")


def _subject_check(csr: x509.CertificateSigningRequest, *, station_id: str, organisation: str) -> None:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise CsrRefused(f"the subject has {len(names)} CNs: exactly one, the station id")
    common_name = str(names[0].value)
    if common_name != station_id:
        # The CN is the station's text: U+0000 (which no station id holds) cannot be stored or looked up in PostgreSQL.
        claimed = common_name.replace("\x00", "\ufffd")[:64]
        raise CsrRefused(f"subject CN {common_name[:64]!r} is not the station id", claimed_cn=claimed)
    orgs = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if organisation and orgs and orgs != [organisation]:
        raise CsrRefused(f"subject O {orgs[0][:64]!r} is not the station's owner")


def _extensions_check(csr: x509.CertificateSigningRequest) -> None:
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRefused(f"unreadable extensions ({_short(exc)})") from exc
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise CsrRefused("the CSR asks for a CA certificate (BasicConstraints CA:TRUE)")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise CsrRefused("the CSR asks for certificate or CRL signing (keyCertSign/cRLSign)")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
