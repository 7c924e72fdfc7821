"""The certificates each station has installed (OCPP 2.0.1 M03 GetInstalledCertificateIds, M04 DeleteCertificate,
M05 InstallCertificate), as the station last reported them.

The calls themselves go through ``station_call`` (audited) or, from a command without Redis, through the server
holding the socket (``chargers.remote``); these functions build their payloads and record their answers, so both
paths store the same thing. ``InstalledCertificate`` rows are only ever what a station said: a type's rows are
replaced by each GetInstalledCertificateIds answer covering it, an accepted InstallCertificate adds one, an accepted
(or NotFound) DeleteCertificate removes one.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from chargers.models import InstalledCertificate, Station
from chargers.pki import ca, storage
from chargers.pki.hash_data import certificate_hash_data, hash_data_key

#: The roots InstallCertificate can put our CA's root in as: the station's trust anchor for the CSMS's TLS server
#: certificate (CSMSRootCertificate) or for ISO 15118 (V2GRootCertificate). Both name the same root here.
ROOT_TYPES = ("CSMSRootCertificate", "V2GRootCertificate")


class InstalledCertificateError(Exception):
    """The request cannot be built (unknown station, no such installed certificate, no CA)."""


def _station(station_id: str) -> Station:
    station = Station.objects.filter(station_id=station_id).first()
    if station is None:
        raise InstalledCertificateError(f"no station {station_id!r}")
    return station


# --- GetInstalledCertificateIds ---------------------------------------------------------------------------------


def installed_ids_payload(*, certificate_types: list[str] | None) -> dict[str, Any]:
    return {"certificateType": list(certificate_types)} if certificate_types else {}


def installed_certificates_record(
    *, station_id: str, certificate_types: list[str] | None, answer: dict[str, Any]
) -> list[InstalledCertificate]:
    """Replace what is known of the station's certificates of ``certificate_types`` (None: all types) with its
    GetInstalledCertificateIds ``answer`` (NotFound: it has none of them). Returns the rows now stored for them."""
    station = _station(station_id)
    now = timezone.now()
    rows: dict[tuple[str, str, str, str], InstalledCertificate] = {}
    if answer.get("status") == "Accepted":
        for chain in answer.get("certificateHashDataChain") or []:
            data = chain["certificateHashData"]
            # Kept as the station wrote them (DeleteCertificate sends them back), compared in a normal form.
            rows[hash_data_key(data)] = InstalledCertificate(
                station=station,
                certificate_type=chain["certificateType"],
                hash_algorithm=data["hashAlgorithm"],
                issuer_name_hash=data["issuerNameHash"],
                issuer_key_hash=data["issuerKeyHash"],
                serial_number=data["serialNumber"],
                child_certificates=chain.get("childCertificateHashData") or [],
                reported_at=now,
            )
    with transaction.atomic():
        known = InstalledCertificate.objects.filter(station=station)
        if certificate_types:
            # A certificate of another type reported under one asked for moves to it: the unique key has no type.
            others = known.exclude(certificate_type__in=certificate_types)
            known.filter(pk__in=[row.pk for row in others if hash_data_key(row.hash_data()) in rows]).delete()
            known = known.filter(certificate_type__in=certificate_types)
        known.delete()
        InstalledCertificate.objects.bulk_create(rows.values())
    return list(rows.values())


# --- InstallCertificate -----------------------------------------------------------------------------------------


def root_certificate() -> x509.Certificate:
    """Our V2G root CA's certificate (the CA bundle's root), as InstallCertificate sends it."""
    if not ca.ca_exists():
        raise InstalledCertificateError("this CSMS has no PKI: run `manage.py pki init`")
    return storage.cert_load(ca.ROOT)


def root_install_payload(*, certificate_type: str) -> dict[str, Any]:
    if certificate_type not in ROOT_TYPES:
        raise InstalledCertificateError(f"the root installs as {' or '.join(ROOT_TYPES)}, not {certificate_type}")
    pem = root_certificate().public_bytes(serialization.Encoding.PEM).decode()
    return {"certificateType": certificate_type, "certificate": pem}


def certificate_install_record(
    *, station_id: str, payload: dict[str, Any], answer: dict[str, Any]
) -> InstalledCertificate | None:
    """After InstallCertificate ``payload``: an Accepted answer means the station has the certificate now."""
    if answer.get("status") != "Accepted":
        return None
    station = _station(station_id)
    cert = x509.load_pem_x509_certificate(payload["certificate"].encode())
    data = certificate_hash_data(cert=cert, issuer=cert)  # a root: its own issuer
    with transaction.atomic():
        _matching(station, data).delete()
        return InstalledCertificate.objects.create(
            station=station,
            certificate_type=payload["certificateType"],
            hash_algorithm=data["hashAlgorithm"],
            issuer_name_hash=data["issuerNameHash"],
            issuer_key_hash=data["issuerKeyHash"],
            serial_number=data["serialNumber"],
            reported_at=timezone.now(),
        )


def _matching(station: Station, data: dict[str, str]) -> QuerySet[InstalledCertificate]:
    """The station's rows naming the certificate ``data`` names (hex case and leading zeroes aside)."""
    key = hash_data_key(data)
    rows = InstalledCertificate.objects.filter(station=station, hash_algorithm=data["hashAlgorithm"])
    return rows.filter(pk__in=[row.pk for row in rows if hash_data_key(row.hash_data()) == key])


# --- DeleteCertificate ------------------------------------------------------------------------------------------


def installed_certificate_find(*, station_id: str, serial: str) -> InstalledCertificate:
    """The one installed certificate of the station with this serial number (hex, any case, "0x" allowed)."""
    wanted = serial.lower().removeprefix("0x").lstrip("0") or "0"
    rows = InstalledCertificate.objects.filter(station=_station(station_id))
    found = [row for row in rows if hash_data_key(row.hash_data())[3] == wanted]
    if not found:
        raise InstalledCertificateError(f"{station_id} has no installed certificate {wanted} on record (refresh?)")
    if len(found) > 1:
        raise InstalledCertificateError(f"{station_id} has {len(found)} certificates with serial {wanted}")
    return found[0]


def certificate_delete_payload(row: InstalledCertificate) -> dict[str, Any]:
    return {"certificateHashData": row.hash_data()}


def certificate_delete_record(*, station_id: str, payload: dict[str, Any], answer: dict[str, Any]) -> bool:
    """After DeleteCertificate ``payload``: Accepted or NotFound, the station no longer has it. Returns whether a row
    was removed."""
    if answer.get("status") not in ("Accepted", "NotFound"):
        return False
    deleted, _ = _matching(_station(station_id), payload["certificateHashData"]).delete()
    return bool(deleted)
