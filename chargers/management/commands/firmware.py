"""``manage.py firmware``: sign firmware and configuration bundles for UpdateFirmware and ``edge-agent apply-config``.

firmware signing-cert --out-cert F --out-key F [--cn NAME] [--organisation O]
    a new signing key, written encrypted, and its codeSigning certificate from the built-in PKI's CPO sub-CA
firmware sign FILE --key-file F --cert-file F [--location URL] [--out-signature F]
    the base64 signature over FILE; prints the UpdateFirmware ``firmware`` fields (location, signature,
    signingCertificate) as JSON

The signing key's passphrase comes from ``--passphrase-file`` or ``$FIRMWARE_SIGNING_PASSPHRASE_FILE`` (its first
line) or ``$FIRMWARE_SIGNING_PASSPHRASE``, never from the command line, where ``ps`` and shell history show it.
Stations trust the signature through the CA bundle (``var/pki/ca-bundle.pem``) as their firmware trust anchor.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargers.pki import firmware
from chargers.pki.storage import PkiError

LOG = logging.getLogger(__name__)
PASSPHRASE_ENV = "FIRMWARE_SIGNING_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


class Command(BaseCommand):
    help = "Firmware signing: signing-cert, sign"

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        cert = sub.add_parser("signing-cert", help="issue a firmware-signing key (encrypted) and certificate")
        cert.add_argument("--out-cert", required=True, help="PEM: the certificate, then the sub-CA's")
        cert.add_argument("--out-key", required=True, help="PEM: the new key, encrypted with the passphrase")
        cert.add_argument("--cn", default="Firmware signing", help="CN= of the certificate")
        cert.add_argument("--organisation", default="", help="O= of the certificate")
        cert.add_argument("--passphrase-file", default=None, help=f"else ${PASSPHRASE_ENV}_FILE or ${PASSPHRASE_ENV}")
        sign = sub.add_parser("sign", help="sign a firmware package or configuration bundle")
        sign.add_argument("file", help="the package to sign")
        sign.add_argument("--key-file", required=True, help="PEM signing key (ECDSA P-256 or Ed25519)")
        sign.add_argument("--cert-file", required=True, help="PEM signing certificate, intermediates after it")
        sign.add_argument("--passphrase-file", default=None, help=f"else ${PASSPHRASE_ENV}_FILE or ${PASSPHRASE_ENV}")
        sign.add_argument("--location", default="", help="the URL stations will download the package from")
        sign.add_argument("--out-signature", default=None, help="also write the base64 signature to this file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, "_" + options["action"].replace("-", "_"))(options)
        except PkiError as exc:
            raise CommandError(str(exc)) from exc

    def _signing_cert(self, options: dict[str, Any]) -> None:
        secret = _passphrase(options["passphrase_file"])
        if secret is None:
            raise CommandError(f"the new key is written encrypted: give ${PASSPHRASE_ENV}_FILE or ${PASSPHRASE_ENV}")
        cert = firmware.firmware_signing_cert_issue(
            common_name=options["cn"],
            organisation=options["organisation"],
            key_file=Path(options["out_key"]),
            cert_file=Path(options["out_cert"]),
            passphrase=secret,
        )
        LOG.info("firmware-signing certificate %x issued (CN %s) by %s", cert.serial_number, options["cn"],
                    _os_user())  # fmt: skip
        self.stdout.write(
            f"firmware-signing certificate {cert.serial_number:x} until {cert.not_valid_after_utc:%Y-%m-%d} "
            f"in {options['out_cert']}, key (encrypted) in {options['out_key']}"
        )

    def _sign(self, options: dict[str, Any]) -> None:
        key = firmware.signing_key_load(Path(options["key_file"]), _passphrase(options["passphrase_file"]))
        chain = firmware.signing_chain_load(Path(options["cert_file"]), key)
        try:
            package = Path(options["file"]).read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {options['file']}: {exc}") from exc
        signature = firmware.package_sign(package=package, key=key)
        if options["out_signature"]:
            Path(options["out_signature"]).write_text(signature + "\n")
        LOG.info("%s signed by %s (%d bytes)", options["file"], _os_user(), len(package))
        fields = {"signature": signature, "signingCertificate": chain}
        if options["location"]:
            fields = {"location": options["location"], **fields}
        self.stdout.write(json.dumps(fields, indent=2))


def _passphrase(path: str | None) -> bytes | None:
    """The passphrase from a file (first line) or the environment; None when none is given."""
    path = path or os.environ.get(f"{PASSPHRASE_ENV}_FILE")
    if path:
        try:
            line = Path(path).read_text().splitlines()[0] if Path(path).stat().st_size else ""
        except OSError as exc:
            raise CommandError(f"cannot read the passphrase file {path}: {exc}") from exc
        return line.encode() or None
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode() or None


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
