"""``manage.py pki``: the built-in V2G PKI (security profiles 2 and 3).

pki init [--organisation O] [--force]            root CA + CPO sub-CA (keys in the PKCS#11 token, or encrypted files)
pki status                                       which key store holds the CA keys, and the CA certificates
pki station-cert ID --out-cert F --out-key F [--organisation O] [--passphrase-file F]
                                                 a station's client certificate (CN = ID) and a new key, encrypted
pki secc-cert ID --out-cert F --out-key F [--organisation O] [--passphrase-file F]
                                                 the charger's ISO 15118-20 TLS server certificate towards the car
                                                 (the SECC's; the car trusts the V2G root) and a new key, encrypted
pki server-cert --host H [--host H2] --out-cert F --out-key F    the CSMS's TLS server certificate
pki revoke SERIAL|STATION_ID [--reason R]        revoke one certificate, or all of a station's; the CRL follows and
                                                 the station's open connection closes

station-cert and secc-cert refuse an id no station has, and writes the key as encrypted PKCS#8 under a passphrase from
``--passphrase-file`` or ``$PKI_STATION_KEY_PASSPHRASE_FILE`` (its first line) or ``$PKI_STATION_KEY_PASSPHRASE``,
never from the command line, where ``ps`` and shell history show it. station-cert and revoke are logged and stored
as security events naming the OS user who ran them.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargers.models import PkiCertificate
from chargers.pki import ca, issue, storage
from chargers.pki.storage import PkiError

PASSPHRASE_ENV = "PKI_STATION_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


class Command(BaseCommand):
    help = "The built-in V2G PKI: init, status, station-cert, secc-cert, server-cert, revoke"

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        init = sub.add_parser("init", help="create the V2G root CA and the CPO sub-CA")
        init.add_argument("--organisation", default="", help="O= of the CA certificates")
        init.add_argument(
            "--force", action="store_true", help="replace an existing CA (its certificates stop verifying)"
        )
        sub.add_parser("status", help="say which key store holds the CA keys, and show the CA certificates")
        for action, about in (
            ("station-cert", "issue a station's TLS client certificate (profile 3) and a key, encrypted"),
            ("secc-cert", "issue a charger's ISO 15118-20 TLS server certificate (SECC) and a key, encrypted"),
        ):
            # allow_abbrev: `--passphrase SECRET` must not pass for --passphrase-file (and show in ps)
            station = sub.add_parser(action, help=about, allow_abbrev=False)
            station.add_argument("station_id")
            station.add_argument("--out-cert", required=True)
            station.add_argument("--out-key", required=True)
            # The CSMS layer knows no organisations (fleet owns that): the operator names the owner for O=.
            station.add_argument("--organisation", default="", help="O= of the certificate (the station's owner)")
            station.add_argument(
                "--passphrase-file",
                default=None,
                help=f"the key's passphrase; else ${PASSPHRASE_ENV}_FILE or ${PASSPHRASE_ENV}",
            )
        server = sub.add_parser("server-cert", help="issue the CSMS's TLS server certificate")
        server.add_argument("--host", action="append", required=True, help="DNS name or IP address (repeatable)")
        server.add_argument("--out-cert", required=True)
        server.add_argument("--out-key", required=True)
        revoke = sub.add_parser("revoke", help="revoke a certificate by serial (hex) or all of a station's")
        revoke.add_argument("target", metavar="SERIAL|STATION_ID")
        revoke.add_argument("--reason", default="", help="e.g. keyCompromise, superseded")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, "_" + options["action"].replace("-", "_"))(options)
        except PkiError as exc:
            raise CommandError(str(exc)) from exc

    def _init(self, options: dict[str, Any]) -> None:
        root, sub = ca.ca_init(organisation=options["organisation"], force=options["force"])
        self.stdout.write(f"root CA {root.serial_number:x} and CPO sub-CA {sub.serial_number:x}")
        self.stdout.write(f"keys: {storage.key_store().describe()}; certificates: {storage.pki_dir()}")
        self.stdout.write(f"trust bundle for stations: {ca.bundle_path()}")

    def _status(self, options: dict[str, Any]) -> None:
        keys = storage.key_store()
        self.stdout.write(f"key store: {keys.describe()}")
        for name in (ca.ROOT, ca.SUB_CA):
            present = keys.key_exists(name)
            path = storage.cert_path(name)
            if not path.exists():
                self.stdout.write(
                    f"{name}: {'key' if present else 'no key'}, no certificate (run `manage.py pki init`)"
                )
                continue
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            if not present:
                key = "NO KEY"
            elif keys.signing_key(name).public_key() == cert.public_key():
                key = "key matches the certificate"
            else:
                key = "KEY DOES NOT MATCH the certificate"
            self.stdout.write(
                f"{name}: {key}; {cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"
            )

    def _station_cert(self, options: dict[str, Any]) -> None:
        self._credentials(options, issue.station_credentials_issue, "station certificate")

    def _secc_cert(self, options: dict[str, Any]) -> None:
        self._credentials(options, issue.secc_credentials_issue, "SECC (ISO 15118) certificate")

    def _credentials(self, options: dict[str, Any], issuer: Callable[..., tuple[bytes, bytes]], what: str) -> None:
        station_id = options["station_id"]
        passphrase = _passphrase(options["passphrase_file"])
        if passphrase is None:
            raise CommandError(f"the key is written encrypted: give --passphrase-file, ${PASSPHRASE_ENV}_FILE or "
                               f"${PASSPHRASE_ENV}")  # fmt: skip
        cert_pem, key_pem = issuer(
            station_id=station_id, organisation=options["organisation"], passphrase=passphrase, actor=_actor()
        )
        Path(options["out_cert"]).write_bytes(cert_pem)
        storage.write_private(Path(options["out_key"]), key_pem)
        serial = format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")
        self.stdout.write(f"{what} {serial} for {station_id}; key (encrypted) in {options['out_key']}")

    def _server_cert(self, options: dict[str, Any]) -> None:
        issued = issue.server_certificate_issue(hosts=options["host"])
        self._write(issued, options)
        self.stdout.write(f"server certificate {issued.cert.serial_number:x} for {', '.join(options['host'])}")

    def _revoke(self, options: dict[str, Any]) -> None:
        target: str = options["target"]
        by_serial = PkiCertificate.objects.filter(serial=target.lower().removeprefix("0x")).exists()
        count = issue.certificate_revoke(
            serial=target if by_serial else None,
            station_id=None if by_serial else target,
            reason=options["reason"],
            actor=_actor(),
        )
        if not count:
            raise CommandError(f"no unrevoked certificate with serial or station id {target}")
        self.stdout.write(f"revoked {count} certificate(s); the CRL at /pki/crl lists them")

    @staticmethod
    def _write(issued: issue.Issued, options: dict[str, Any]) -> None:
        Path(options["out_cert"]).write_bytes(issued.cert_pem())
        storage.write_private(Path(options["out_key"]), issued.key_pem())


def _passphrase(path: str | None) -> bytes | None:
    """The passphrase from a file (first line) or the environment; None when none is given."""
    path = path or os.environ.get(f"{PASSPHRASE_ENV}_FILE")
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise CommandError(f"cannot read the passphrase file {path}: {exc}") from exc
        return lines[0].encode() if lines and lines[0] else None
    return os.environ.get(PASSPHRASE_ENV, "").encode() or None


def _actor() -> str:
    """Who runs the command, for the log and the security events: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"
