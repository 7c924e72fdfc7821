"""Certificates for ISO 15118-20's TLS in the tests: the charger's from the project's own V2G PKI, the car's from an
OEM PKI made here.

- The SECC chain and key come from the CSMS's ``manage.py pki init`` and ``pki secc-cert`` (chargers.pki), run in the
  CSMS's environment (``.venv``, which ``make test`` installs first; Josev's pins keep it out of this one) on a
  throw-away SQLite database: what an operator does, and the V2G root it made is the car's trust anchor.
- The car's vehicle certificate (TLS 1.3 client authentication) comes from an OEM root and sub-CA built here with
  ``cryptography`` alone, like tests/chargers/mo_pki.py builds a mobility operator's.
- ``ev_pki_dir`` lays the car's side out where Josev's EVCC reads it (PKI_PATH/iso15118_2/...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[3]
CSMS_PYTHON = REPO / ".venv" / "bin" / "python"
STATION_ID = "edge-1"
KEY_PASSPHRASE = "secc-key-passphrase-for-tests"  # a throw-away test key's


@dataclass(frozen=True)
class ProjectPki:
    secc_chain: Path  # leaf + CPO sub-CA
    secc_key: Path  # encrypted PKCS#8
    key_passphrase: str
    v2g_root: Path


def csms_missing() -> str | None:
    if not CSMS_PYTHON.exists():
        return f"the CSMS's environment ({CSMS_PYTHON}) is needed for `manage.py pki`: `make install`"
    return None


def project_pki(directory: Path) -> ProjectPki:
    """``pki init`` and ``pki secc-cert edge-1`` in a fresh CSMS instance under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    # A development instance of its own: SQLite in ``directory``, CA keys in files there (not CI's PostgreSQL, Redis,
    # a PKCS#11 token or a production setting that refuses a generated passphrase).
    dropped = ("DATABASE_URL", "REDIS_URL", "VPP_ENV", "DJANGO_SETTINGS_MODULE")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("PKI_")}
    env |= {"VPP_VAR_DIR": str(directory / "var"), "PKI_STATION_KEY_PASSPHRASE": KEY_PASSPHRASE,
            "STATION_PASSWORD": "edge-1-password-for-tests", "PYTHONPATH": str(REPO)}  # fmt: skip

    def manage(*args: str) -> None:
        subprocess.run([str(CSMS_PYTHON), "manage.py", *args], cwd=REPO, env=env, check=True, capture_output=True,
                       timeout=300)  # fmt: skip

    manage("migrate", "-v0")
    manage("station", "add", STATION_ID, "--org", "depot", "--create-org")
    manage("pki", "init", "--organisation", "Test CPO")
    chain, key = directory / "secc.pem", directory / "secc.key"
    manage("pki", "secc-cert", STATION_ID, "--out-cert", str(chain), "--out-key", str(key))
    return ProjectPki(chain, key, KEY_PASSPHRASE, directory / "var" / "pki" / "v2g-root-ca.pem")


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "OEM")])


def _certificate(cn: str, issuer: Issued | None, *, ca: bool, eku: list[x509.ObjectIdentifier] | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@dataclass(frozen=True)
class OemPki:
    root: Issued
    sub: Issued
    vehicle: Issued  # the car's TLS client certificate


def oem_pki(maker: str = "Test OEM") -> OemPki:
    root = _certificate(f"{maker} Root CA", None, ca=True)
    sub = _certificate(f"{maker} Sub-CA", root, ca=True)
    return OemPki(root, sub, _certificate("WMIV1234567890ABCDEX", sub, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]))


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(pem(*certs))
    return path


def ev_pki_dir(directory: Path, *, v2g_root: Path, oem: OemPki) -> Path:
    """The car's files where Josev's EVCC reads them: the V2G root it trusts, its OEM chain and key."""
    certs, keys = directory / "iso15118_2" / "certs", directory / "iso15118_2" / "private_keys"
    certs.mkdir(parents=True, exist_ok=True)
    keys.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(v2g_root, certs / "v2gRootCACert.pem")
    write_pem(certs / "oemCertChain.pem", oem.vehicle.cert, oem.sub.cert)
    key = oem.vehicle.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (keys / "oemLeaf.key").write_bytes(key)
    (keys / "oemLeafPassword.txt").write_text("")  # empty: the key is not encrypted (Josev's convention)
    return directory
