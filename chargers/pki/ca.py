"""The V2G root CA and the CPO sub-CA that signs station and server certificates.

ECDSA P-256 (secp256r1) with SHA-256, as ISO 15118-2's V2G PKI and OCPP 2.0.1's security profiles use. Validity
follows ISO 15118-2's maxima scaled to an operator's own PKI: root 10 years, sub-CA 4 years (the sub-CA is the one
that signs day to day; rotate it before it expires, the root stays).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from chargers.pki import storage
from chargers.pki.storage import PkiError

ROOT = "v2g-root-ca"
SUB_CA = "cpo-sub-ca"
BUNDLE = "ca-bundle"  # root + sub-CA, PEM: what stations and TLS clients trust
CURVE = ec.SECP256R1()
ROOT_VALIDITY = timedelta(days=3650)
SUB_CA_VALIDITY = timedelta(days=4 * 365)
BACKDATE = timedelta(minutes=5)  # tolerate a station clock a few minutes behind


def key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage with only the named uses set (cryptography wants all nine flags spelled out)."""
    flags = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
        "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    )  # fmt: skip
    return x509.KeyUsage(**{flag: allowed.get(flag, False) for flag in flags})


@dataclass(frozen=True)
class Ca:
    """A CA as the rest of the code sees it: its certificate and the name of its key in the key store.

    Everything a CA signs goes through the ``*_sign`` methods, never through the private key: the key may live in a
    token that signs inside itself (PKCS#11) and never hands it out.
    """

    name: str
    cert: x509.Certificate

    def authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """The AuthorityKeyIdentifier of what this CA signs: its own SubjectKeyIdentifier."""
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def certificate_sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key(), hashes.SHA256())

    def crl_sign(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return builder.sign(self._key(), hashes.SHA256())

    def ocsp_sign(self, builder: ocsp.OCSPResponseBuilder) -> ocsp.OCSPResponse:
        """An OCSP response signed by this CA itself (RFC 6960 4.2.2.2: the issuer of the certificates asked about)."""
        return builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert).sign(self._key(), hashes.SHA256())

    def _key(self) -> ec.EllipticCurvePrivateKey:
        """The configured store's key (a decrypted file's, or a token's that signs inside the token), checked against
        this CA's certificate: a key replaced under a certificate would sign what nobody can verify."""
        key = storage.signing_key(self.name)
        if key.public_key() != self.cert.public_key():
            raise PkiError(
                f"the key {self.name} in {storage.key_store().describe()} does not match its certificate "
                f"{storage.cert_path(self.name)}: run `manage.py pki init --force` to make a new CA"
            )
        return key


def _name(common_name: str, organisation: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    attributes.append(x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "V2G"))
    return x509.Name(attributes)


def _ca_cert(
    *, subject: x509.Name, key: ec.EllipticCurvePublicKey, issuer: Ca | None, validity: timedelta, path_length: int
) -> x509.CertificateBuilder:
    """The certificate of CA key ``key`` to be signed by ``issuer`` (or, for the root, by the key itself)."""
    now = datetime.now(UTC)
    issuer_name = issuer.cert.subject if issuer else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )
    if issuer:
        builder = builder.add_extension(issuer.authority_key_id(), critical=False)
    return builder


def ca_init(*, organisation: str = "", force: bool = False) -> tuple[x509.Certificate, x509.Certificate]:
    """Create the root CA and the CPO sub-CA: keys made by the configured key store (encrypted files, or generated
    inside the PKCS#11 token, which then also signs the root's own certificate), certificates and bundle as PEM.

    Refuses to replace an existing CA without ``force``: every certificate it issued would stop verifying.
    """
    keys = storage.key_store()
    if not force and (keys.key_exists(ROOT) or keys.key_exists(SUB_CA)):
        raise PkiError(f"a CA already exists in {keys.describe()} (use --force to replace it and its trust)")
    root_public = keys.key_generate(ROOT, replace=force)
    root_cert = _ca_cert(
        subject=_name("V2G Root CA", organisation), key=root_public, issuer=None, validity=ROOT_VALIDITY, path_length=1
    ).sign(keys.signing_key(ROOT), hashes.SHA256())
    root_cert.verify_directly_issued_by(root_cert)  # the store signed with the key it generated
    sub_public = keys.key_generate(SUB_CA, replace=force)
    sub_cert = Ca(ROOT, root_cert).certificate_sign(
        _ca_cert(
            subject=_name("CPO Sub-CA", organisation),
            key=sub_public,
            issuer=Ca(ROOT, root_cert),
            validity=SUB_CA_VALIDITY,
            path_length=0,
        )
    )
    storage.cert_store(ROOT, root_cert)
    storage.cert_store(SUB_CA, sub_cert)
    bundle = sub_cert.public_bytes(serialization.Encoding.PEM) + root_cert.public_bytes(serialization.Encoding.PEM)
    storage.cert_path(BUNDLE).write_bytes(bundle)
    storage.signing_key_forget()
    return root_cert, sub_cert


def ca_exists() -> bool:
    return storage.key_store().key_exists(SUB_CA) and storage.cert_path(SUB_CA).exists()


def sub_ca() -> Ca:
    return Ca(SUB_CA, storage.cert_load(SUB_CA))


def bundle_path() -> str:
    return str(storage.cert_path(BUNDLE))
