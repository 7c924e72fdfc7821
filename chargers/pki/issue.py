"""Issue station and server certificates from the CPO sub-CA, record them, revoke them, and build the CRL.

Every issued certificate is recorded in ``PkiCertificate`` in the same call (the profile-3 handshake refuses a
certificate the register does not know, so a certificate is usable only once it is recorded).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.db import transaction

from chargers import certificate_sessions
from chargers.models import CertificateUse, PkiCertificate, Station, StationEventKind
from chargers.pki import ca, ocsp, storage
from chargers.pki.storage import PkiError
from chargers.services.security_events import security_event_record

LOG = logging.getLogger("chargers.security")

LEAF_VALIDITY = timedelta(days=365)
StationPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey  # the keys a station's CSR may carry (pki.csr)
CRL_VALIDITY = timedelta(days=1)  # nextUpdate: relying parties fetch a fresh one at least daily
CRL_REBUILD_AFTER = timedelta(hours=1)
KEY_PASSPHRASE_MIN = 8  # characters of the passphrase a station key is written under (pki station-cert)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        issuer = ca.sub_ca().cert.public_bytes(serialization.Encoding.PEM)
        return self.cert.public_bytes(serialization.Encoding.PEM) + issuer  # leaf + sub-CA: the chain to present

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def _leaf(
    *,
    subject: x509.Name,
    eku: list[x509.ObjectIdentifier],
    san: list[x509.GeneralName],
    not_before: datetime | None,
    not_after: datetime | None,
) -> Issued:
    key = ec.generate_private_key(ca.CURVE)
    cert = _leaf_cert(
        subject=subject, public_key=key.public_key(), eku=eku, san=san, not_before=not_before, not_after=not_after
    )
    return Issued(cert, key)


def _leaf_cert(
    *,
    subject: x509.Name,
    public_key: StationPublicKey,
    eku: list[x509.ObjectIdentifier],
    san: list[x509.GeneralName],
    not_before: datetime | None,
    not_after: datetime | None,
    usage: x509.KeyUsage | None = None,
    validity: timedelta = LEAF_VALIDITY,
) -> x509.Certificate:
    """An end-entity certificate for ``public_key``, signed by the sub-CA (through its method: the key stays put).

    ``usage`` defaults to a TLS endpoint's: EC keys agree on keys (ECDHE), RSA keys encipher them (RFC 5280 4.2.1.3
    pairs the bits with the key type)."""
    issuer = ca.sub_ca()
    now = datetime.now(UTC)
    start = not_before or now - ca.BACKDATE
    end = min(not_after or now + validity, issuer.cert.not_valid_after_utc)  # never outlive the issuer
    if usage is None:
        usage = (
            ca.key_usage(digital_signature=True, key_encipherment=True)
            if isinstance(public_key, rsa.RSAPublicKey)
            else ca.key_usage(digital_signature=True, key_agreement=True)
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer.authority_key_id(), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if (aia := ocsp.aia_extension()) is not None:  # PKI_OCSP_URL: where relying parties ask about this certificate
        builder = builder.add_extension(aia, critical=False)
    return issuer.certificate_sign(builder)


def firmware_signing_certificate_issue(
    *, public_key: ec.EllipticCurvePublicKey, subject: x509.Name, validity: timedelta
) -> x509.Certificate:
    """A codeSigning certificate (keyUsage digitalSignature only) for a firmware-signing key, recorded in the register
    so that ``pki revoke`` and the CRL and OCSP responder know it."""
    cert = _leaf_cert(
        subject=subject,
        public_key=public_key,
        eku=[ExtendedKeyUsageOID.CODE_SIGNING],
        san=[],
        not_before=None,
        not_after=None,
        usage=ca.key_usage(digital_signature=True),
        validity=validity,
    )
    common_name = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    _record(cert, use=CertificateUse.FIRMWARE, subject_cn=str(common_name), station=None)
    return cert


def _record(issued: Issued | x509.Certificate, *, use: str, subject_cn: str, station: Station | None) -> PkiCertificate:
    cert = issued.cert if isinstance(issued, Issued) else issued
    return PkiCertificate.objects.create(
        serial=serial_hex(cert.serial_number),
        use=use,
        subject_cn=subject_cn,
        station=station,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _station_subject(station_id: str, organisation: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, station_id)]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation[:64]))  # X.520 upper bound
    return x509.Name(attributes)


def station_certificate_issue(
    *, station_id: str, organisation: str = "", not_before: datetime | None = None, not_after: datetime | None = None
) -> Issued:
    """A profile-3 client certificate: CN = the station id (OCPP 2.0.1 A00.FR.417), O = its owner, clientAuth."""
    issued = _leaf(
        subject=_station_subject(station_id, organisation),
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        san=[],
        not_before=not_before,
        not_after=not_after,
    )
    _record(
        issued,
        use=CertificateUse.STATION,
        subject_cn=station_id,
        station=Station.objects.filter(station_id=station_id).first(),
    )
    return issued


def _credentials_checked(station_id: str, passphrase: bytes) -> None:
    if len(passphrase) < KEY_PASSPHRASE_MIN:
        raise PkiError(f"the key's passphrase must have at least {KEY_PASSPHRASE_MIN} characters")
    if not Station.objects.filter(station_id=station_id).exists():
        raise PkiError(f"no station {station_id!r}: add it first (`manage.py station add`)")


def secc_credentials_issue(
    *, station_id: str, organisation: str = "", passphrase: bytes, actor: str
) -> tuple[bytes, bytes]:
    """A charger's ISO 15118-20 SECC certificate and a new key (``pki secc-cert``): the TLS server certificate the
    charger shows the car, signed by the CPO sub-CA, which the car verifies against the V2G root (ISO 15118-20
    Annex F: CPO chain, serverAuth, ECDSA P-256; CN = the station id, DC = CPO). Returns (the chain PEM, leaf +
    sub-CA; the key as encrypted PKCS#8 PEM). Refuses what ``station_credentials_issue`` refuses; recorded in the
    register (``pki revoke`` puts it on the CRL) and stored as a ``CertificateIssued`` security event."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, station_id[:64])]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation[:64]))
    attributes.append(x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "CPO"))
    with transaction.atomic():
        _credentials_checked(station_id, passphrase)
        issued = _leaf(subject=x509.Name(attributes), eku=[ExtendedKeyUsageOID.SERVER_AUTH], san=[],
                       not_before=None, not_after=None)  # fmt: skip
        station = Station.objects.get(station_id=station_id)
        _record(issued, use=CertificateUse.SECC, subject_cn=station_id, station=station)
        serial = serial_hex(issued.cert.serial_number)
        LOG.warning("SECC certificate %s and key issued for %s by %s", serial, station_id, actor)
        security_event_record(
            kind=StationEventKind.CERTIFICATE_ISSUED,
            station_ident=station_id,
            summary=f"SECC (ISO 15118) certificate {serial} and its key issued by {actor}",
            data={"type": "CertificateIssued", "use": CertificateUse.SECC, "serial": serial, "actor": actor,
                  "notAfter": issued.cert.not_valid_after_utc.isoformat()},
        )  # fmt: skip
    return issued.cert_pem(), issued.key_pem(passphrase)


def station_credentials_issue(
    *, station_id: str, organisation: str = "", passphrase: bytes, actor: str
) -> tuple[bytes, bytes]:
    """A certificate and a new key for a station that cannot make its own (``pki station-cert``): (the chain PEM,
    the key as encrypted PKCS#8 PEM). No private key leaves the server unencrypted.

    Refuses (PkiError) an id no station has (a certificate waiting for whoever later adds that id would open its
    profile-3 socket) and a passphrase under ``KEY_PASSPHRASE_MIN`` characters. The issue is logged and stored as a
    ``CertificateIssued`` security event naming ``actor`` (who ran it, e.g. ``cli:alice``).
    """
    with transaction.atomic():
        _credentials_checked(station_id, passphrase)
        issued = station_certificate_issue(station_id=station_id, organisation=organisation)
        serial = serial_hex(issued.cert.serial_number)
        not_after = issued.cert.not_valid_after_utc
        LOG.warning("station certificate %s and key issued for %s by %s", serial, station_id, actor)
        security_event_record(
            kind=StationEventKind.CERTIFICATE_ISSUED,
            station_ident=station_id,
            summary=f"certificate {serial} and its key issued by {actor}",
            data={"type": "CertificateIssued", "serial": serial, "actor": actor, "notAfter": not_after.isoformat()},
        )
    return issued.cert_pem(), issued.key_pem(passphrase)


def station_certificate_sign(
    *, station_id: str, public_key: StationPublicKey, organisation: str = ""
) -> x509.Certificate:
    """A station certificate for a key the station generated and keeps (SignCertificate's CSR): the same profile as
    ``station_certificate_issue``. Only signs: no database, so it may run on any thread and outside any transaction
    (the key may sit in a slow token). Usable once ``station_certificate_record`` has put it in the register."""
    return _leaf_cert(
        subject=_station_subject(station_id, organisation),
        public_key=public_key,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        san=[],
        not_before=None,
        not_after=None,
    )


def station_certificate_record(*, cert: x509.Certificate, station: Station) -> PkiCertificate:
    """Put a certificate from ``station_certificate_sign`` in the register (the caller's transaction)."""
    return _record(cert, use=CertificateUse.STATION, subject_cn=station.station_id, station=station)


def chain_pem(cert: x509.Certificate) -> str:
    """``cert`` followed by the sub-CA that signed it, PEM: the chain a station presents (CertificateSigned)."""
    issuer = ca.sub_ca().cert
    return (cert.public_bytes(serialization.Encoding.PEM) + issuer.public_bytes(serialization.Encoding.PEM)).decode()


def server_certificate_issue(*, hosts: list[str], organisation: str = "") -> Issued:
    """The CSMS's TLS server certificate: the hosts (names or IP addresses) in the SAN, serverAuth."""
    if not hosts:
        raise PkiError("a server certificate needs at least one host")
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    issued = _leaf(
        subject=x509.Name(attributes),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=san,
        not_before=None,
        not_after=None,
    )
    _record(issued, use=CertificateUse.SERVER, subject_cn=hosts[0], station=None)
    return issued


def certificate_revoke(
    *,
    serial: str | None = None,
    station_id: str | None = None,
    serials: Sequence[str] | None = None,
    reason: str = "",
    actor: str = "system",
) -> int:
    """Revoke one certificate by serial (hex), several by serials, or every unrevoked certificate of a station.
    Returns how many.

    Each revocation is logged and stored as a ``CertificateRevoked`` security event naming ``actor`` (who or what
    revoked it, e.g. ``cli:alice``). Once committed, every connection presenting a revoked certificate is closed,
    in this process and, through the channel layer, in the others (``chargers.certificate_sessions``).
    """
    if sum(x is not None for x in (serial, station_id, serials)) != 1:
        raise PkiError("revoke by serial, serials or station id, one of them")
    rows = PkiCertificate.objects.filter(revoked_at__isnull=True)
    if serial is not None:
        rows = rows.filter(serial=_serial(serial))
    elif serials is not None:
        rows = rows.filter(serial__in=[_serial(s) for s in serials])
    else:
        rows = rows.filter(subject_cn=station_id)
    now = datetime.now(UTC)
    with transaction.atomic():
        found = list(rows.select_for_update().values_list("serial", "subject_cn", "use"))
        revoked = [s for s, _, _ in found]
        count = PkiCertificate.objects.filter(serial__in=revoked, revoked_at__isnull=True).update(
            revoked_at=now, revocation_reason=reason[:32]
        )
        subjects: dict[tuple[str, str], list[str]] = {}
        for serial_, subject, use in found:
            subjects.setdefault((subject, use), []).append(serial_)
        for (subject, use), of_subject in subjects.items():
            LOG.warning("revoked %s certificate(s) %s of %s (%s) by %s", use, ", ".join(of_subject), subject,
                        reason or "no reason given", actor)  # fmt: skip
            security_event_record(
                kind=StationEventKind.CERTIFICATE_REVOKED,
                station_ident=subject if use == CertificateUse.STATION else "",
                summary=f"{use} certificate {', '.join(of_subject)} of {subject} revoked by {actor}",
                data={"type": "CertificateRevoked", "serials": of_subject, "subject": subject, "use": use,
                      "reason": reason, "actor": actor},
            )  # fmt: skip
        stations = sorted({subject for (subject, use) in subjects if use == CertificateUse.STATION})
        if revoked:
            transaction.on_commit(partial(certificate_sessions.revoked_notify, serials=revoked, station_ids=stations,
                                          reason=reason))  # fmt: skip
    _CRL.forget()
    return count


def _serial(serial: str) -> str:
    return serial.lower().removeprefix("0x")


class _CrlCache:
    """The signed CRL, rebuilt when a revocation is recorded here or after CRL_REBUILD_AFTER: a public endpoint must
    not sign on every request. Another process's revocation shows up within CRL_REBUILD_AFTER, or at once through
    the revocation count the check below compares."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._der = b""
        self._built_at = datetime.min.replace(tzinfo=UTC)
        self._count = -1

    def forget(self) -> None:
        with self._lock:
            self._der = b""

    def der(self) -> bytes:
        revoked = PkiCertificate.objects.filter(revoked_at__isnull=False)
        count = revoked.count()
        now = datetime.now(UTC)
        with self._lock:
            if self._der and count == self._count and now - self._built_at < CRL_REBUILD_AFTER:
                return self._der
        der = crl_build(now=now)
        with self._lock:
            self._der, self._built_at, self._count = der, now, count
        return der


_CRL = _CrlCache()


def crl_der() -> bytes:
    return _CRL.der()


def crl_build(*, now: datetime) -> bytes:
    """A CRL signed by the CPO sub-CA listing every revoked certificate it issued, DER (RFC 5280)."""
    issuer = ca.sub_ca()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(issuer.authority_key_id(), critical=False)
    )
    revoked = PkiCertificate.objects.filter(revoked_at__isnull=False).values_list("serial", "revoked_at")
    for serial, revoked_at in revoked:
        assert revoked_at is not None  # filtered above
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(revoked_at).build()
        )
    return issuer.crl_sign(builder).public_bytes(serialization.Encoding.DER)


def server_credentials_ensure(*, hosts: list[str]) -> tuple[str, str]:
    """The embedded default's TLS certificate and key files in PKI_DIR, issued (and the CA created) on first use.

    The key file is unencrypted (0600): Daphne must read it unattended at every start. Re-issued when it is within
    30 days of expiry.
    """
    cert_file = storage.cert_path("server")
    key_file = storage.pki_dir() / "server.key.pem"
    if cert_file.exists() and key_file.exists():
        current = x509.load_pem_x509_certificate(cert_file.read_bytes())
        if current.not_valid_after_utc - datetime.now(UTC) > timedelta(days=30):
            return str(cert_file), str(key_file)
    if not ca.ca_exists():
        ca.ca_init()
    issued = server_certificate_issue(hosts=hosts)
    storage.write_private(key_file, issued.key_pem())
    cert_file.write_bytes(issued.cert_pem())
    return str(cert_file), str(key_file)
