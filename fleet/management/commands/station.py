"""``station add <id>... --org SLUG --password-file F`` provisions stations for an organisation (``--passwords-out F``
instead: a distinct random password per station, written to F); ``station rotate-password <id>...`` sends each a new
random password (audited, its hash kept as pending until the station uses it); ``station assign
<id>... --org SLUG`` moves them to another; ``station call <id> <Action> '<json>'`` commands one (audited as
``cli:<os user>``); ``station accept <id>`` accepts a Pending station (recorded as ``cli:<os user>``; an online
station is asked to boot again, a call audited like ``station call``; if that fails, its open connection serves it
within ``OCPP_BOOT_RECHECK_S`` and its next boot is Accepted); ``station ledger-check FILE`` prints
``N acknowledged, N stored, M missing, D doubled`` for an edge agent's ledger and exits non-zero unless nothing is
missing or doubled.

``station certs list <id>`` shows the certificates a station reported as installed and those the PKI issued it;
``station certs refresh <id> [--type T]...`` asks it (GetInstalledCertificateIds) and stores the answer; ``station
certs install-root <id> [--type CSMSRootCertificate|V2GRootCertificate]`` installs our CA's root (InstallCertificate);
``station certs delete <id> SERIAL`` removes an installed certificate (DeleteCertificate). The calls are audited like
``station call``.

Passwords never go on the command line (where ``ps`` and shell history see them): ``--password-file`` or the
``STATION_PASSWORD`` environment variable.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from chargers.ledger import ledger_compare, ledger_read
from chargers.models import BootStatus, InstalledCertificate, PkiCertificate, Station
from chargers.passwords import WeakStationPassword
from chargers.remote import RemoteCallError, station_call_remote
from chargers.services import installed_certificates as installed
from chargers.services.password_rotation import ADOPTED, password_generate, rotation_payload, rotation_status
from chargers.services.provisioning import BOOT_TRIGGER, PasswordRotation, station_accept, station_password_rotate
from chargers.services.station_call import StationCallError, StationUnknown, station_call
from fleet.models import ApiScope, Organisation
from fleet.services.accounts import api_key_issue, api_key_revoke
from fleet.services.errors import FleetError
from fleet.services.stations import station_ownership_set, stations_provision

PASSWORD_ENV = "STATION_PASSWORD"  # noqa: S105 - the variable's name, not a password
# GetCertificateIdUseEnumType (2.1's list; OEMRootCertificate is 2.1 only)
CERTIFICATE_ID_TYPES = (
    "V2GRootCertificate", "MORootCertificate", "CSMSRootCertificate", "V2GCertificateChain",
    "ManufacturerRootCertificate", "OEMRootCertificate",
)  # fmt: skip


class Command(BaseCommand):
    help = (
        "Provision OCPP stations for an organisation (add), move them to another (assign), or send a "
        "CSMS-initiated message to one and print its answer (call)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        add = sub.add_parser("add", help="create stations; many ids in one call for fleets and load tests")
        add.add_argument("station_ids", nargs="+", metavar="ID")
        add.add_argument("--org", required=True, help="slug of the owning organisation")
        add.add_argument("--create-org", action="store_true", help="create the organisation if it does not exist")
        add.add_argument(
            "--password-file",
            default=None,
            help=f"file holding the OCPP BasicAuthPassword (16-40 characters); default ${PASSWORD_ENV}",
        )
        add.add_argument(
            "--passwords-out",
            default=None,
            metavar="FILE",
            help="generate a distinct random password per station instead, written to FILE (created 0600, "
            "lines ID<TAB>PASSWORD); FILE must not exist",
        )
        add.add_argument("--update", action="store_true", help="also reset the password of existing stations")
        add.add_argument("--boot-status", choices=BootStatus.values, default=BootStatus.ACCEPTED)
        add.add_argument(
            "--profile",
            type=int,
            choices=(1, 2, 3),
            default=None,
            help="OCPP security profile: 1 Basic auth, 2 TLS + Basic auth, 3 TLS client certificate (new: 1)",
        )
        assign = sub.add_parser("assign", help="move stations to an organisation (operators)")
        assign.add_argument("station_ids", nargs="+", metavar="ID")
        assign.add_argument("--org", required=True, help="slug of the new owner")
        accept = sub.add_parser("accept", help="accept a Pending or Rejected station (it boots again if online)")
        accept.add_argument("station_id")
        accept.add_argument("--timeout", type=float, default=float(settings.OCPP_CALL_TIMEOUT))
        accept.add_argument("--server", default=None, help="as for call")
        accept.add_argument("--user", default=None, help="as for call")
        rotate = sub.add_parser(
            "rotate-password",
            help="send each station a new random BasicAuthPassword (SetVariables); the old one stays valid until "
            "the station connects with the new one",
        )
        rotate.add_argument("station_ids", nargs="+", metavar="ID")
        rotate.add_argument("--timeout", type=float, default=float(settings.OCPP_CALL_TIMEOUT))
        rotate.add_argument("--server", default=None, help="as for call")
        rotate.add_argument("--user", default=None, help="as for call")
        call = sub.add_parser("call", help="send <Action> with a JSON payload and print the CALLRESULT")
        call.add_argument("station_id")
        call.add_argument("action", help="e.g. Reset, GetVariables, SetChargingProfile, SetDERControl")
        call.add_argument("payload", nargs="?", default="{}", help="JSON object")
        call.add_argument("--timeout", type=float, default=float(settings.OCPP_CALL_TIMEOUT))
        call.add_argument(
            "--server",
            default=None,
            help="server base URL for the in-memory channel layer (no REDIS_URL); default $VPP_SERVER_URL "
            "or http://127.0.0.1:8000",
        )
        call.add_argument(
            "--user",
            default=None,
            help="without $VPP_API_KEY: the staff user a 5-minute key is issued to (default: first superuser)",
        )

        self._certs_arguments(sub)

        check = sub.add_parser(
            "ledger-check",
            help="compare an edge agent's ledger (edge-agent simulate --ledger FILE) with what is stored",
        )
        check.add_argument("ledger", metavar="FILE", help="JSON lines, one per acknowledged message")

    def handle(self, *args: Any, **options: Any) -> None:
        handlers = {
            "add": self._add,
            "assign": self._assign,
            "call": self._call,
            "accept": self._accept,
            "rotate-password": self._rotate_password,
            "ledger-check": self._ledger_check,
            "certs": self._certs,
        }
        handlers[options["subcommand"]](options)

    # --- station certs ----------------------------------------------------------------------------------------

    def _certs_arguments(self, sub: Any) -> None:
        certs = sub.add_parser("certs", help="a station's certificates: list, refresh, install-root, delete")
        certs_sub = certs.add_subparsers(dest="certs_command", required=True)
        listing = certs_sub.add_parser("list", help="installed certificates as last reported, and those we issued")
        listing.add_argument("station_id")
        refresh = certs_sub.add_parser("refresh", help="GetInstalledCertificateIds: ask the station, store the answer")
        refresh.add_argument("station_id")
        refresh.add_argument(
            "--type", dest="types", action="append", choices=CERTIFICATE_ID_TYPES, help="repeatable; default: all"
        )
        install = certs_sub.add_parser("install-root", help="InstallCertificate: our CA's root certificate")
        install.add_argument("station_id")
        install.add_argument("--type", dest="root_type", choices=installed.ROOT_TYPES, default=installed.ROOT_TYPES[0])
        delete = certs_sub.add_parser("delete", help="DeleteCertificate: an installed certificate, by serial number")
        delete.add_argument("station_id")
        delete.add_argument("serial", help="hexadecimal, as `station certs list` shows it")
        for parser in (refresh, install, delete):
            parser.add_argument("--timeout", type=float, default=float(settings.OCPP_CALL_TIMEOUT))
            parser.add_argument("--server", default=None, help="as for call")
            parser.add_argument("--user", default=None, help="as for call")

    def _certs(self, options: dict[str, Any]) -> None:
        station_id = options["station_id"]
        if not Station.objects.filter(station_id=station_id).exists():
            raise CommandError(f"no station {station_id!r}")
        command = options["certs_command"]
        try:
            if command == "list":
                self._certs_list(station_id)
            elif command == "refresh":
                types = list(dict.fromkeys(options["types"] or [])) or None
                answer = self._call_any(
                    options, "GetInstalledCertificateIds", installed.installed_ids_payload(certificate_types=types)
                )
                rows = installed.installed_certificates_record(
                    station_id=station_id, certificate_types=types, answer=answer
                )
                self.stdout.write(f"{station_id}: {answer.get('status')}, {len(rows)} certificate(s) stored")
            elif command == "install-root":
                payload = installed.root_install_payload(certificate_type=options["root_type"])
                answer = self._call_any(options, "InstallCertificate", payload)
                installed.certificate_install_record(station_id=station_id, payload=payload, answer=answer)
                status = answer.get("status")
                self.stdout.write(f"{station_id}: InstallCertificate {payload['certificateType']} {status}")
            else:
                row = installed.installed_certificate_find(station_id=station_id, serial=options["serial"])
                payload = installed.certificate_delete_payload(row)
                answer = self._call_any(options, "DeleteCertificate", payload)
                installed.certificate_delete_record(station_id=station_id, payload=payload, answer=answer)
                self.stdout.write(f"{station_id}: DeleteCertificate {row.serial_number} {answer.get('status')}")
        except installed.InstalledCertificateError as exc:
            raise CommandError(str(exc)) from exc

    def _certs_list(self, station_id: str) -> None:
        rows = InstalledCertificate.objects.filter(station__station_id=station_id)
        self.stdout.write(f"installed on {station_id} (as last reported):")
        for row in rows:
            children = f", {len(row.child_certificates)} child(ren)" if row.child_certificates else ""
            self.stdout.write(
                f"  {row.certificate_type:<28} serial {row.serial_number} ({row.hash_algorithm}{children}), "
                f"reported {row.reported_at:%Y-%m-%d %H:%M}"
            )
        issued = PkiCertificate.objects.filter(station__station_id=station_id)
        self.stdout.write(f"issued to {station_id} by this PKI:")
        for cert in issued:
            state = f"revoked {cert.revoked_at:%Y-%m-%d}" if cert.revoked_at else "valid"
            self.stdout.write(f"  serial {cert.serial}, until {cert.not_after:%Y-%m-%d}, {state}")

    def _call_any(self, options: dict[str, Any], action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One audited call: through station_call with Redis, else through the server holding the socket."""
        client = f"cli:{_os_user()}"
        if settings.REDIS_URL:
            try:
                return station_call(
                    station_id=options["station_id"],
                    action=action,
                    payload=payload,
                    actor_user_id=None,
                    actor_label=client,
                    timeout=options["timeout"],
                )
            except StationCallError as exc:
                raise CommandError(f"{action}: {type(exc).__name__}: {exc}") from exc
        with _call_key(options["user"]) as api_key:
            try:
                return station_call_remote(
                    station_id=options["station_id"],
                    action=action,
                    payload=payload,
                    timeout=options["timeout"],
                    server=options["server"],
                    api_key=api_key,
                    client=client,
                )
            except RemoteCallError as exc:
                raise CommandError(f"{action}: {exc}") from exc

    def _add(self, options: dict[str, Any]) -> None:
        organisation = _organisation(options["org"], create=options["create_org"])
        out = options["passwords_out"]
        if out is not None and (options["password_file"] is not None or os.environ.get(PASSWORD_ENV)):
            raise CommandError(f"--passwords-out generates the passwords: give no --password-file nor ${PASSWORD_ENV}")
        password: str | dict[str, str]
        if out is not None:
            password = {sid: password_generate() for sid in dict.fromkeys(options["station_ids"])}
            _passwords_write(out, password)  # before storing: a password that is not kept anywhere is no use
        else:
            password = _password(options["password_file"])
        try:
            result = stations_provision(
                station_ids=options["station_ids"],
                password=password,
                organisation=organisation,
                update=options["update"],
                boot_status=options["boot_status"],
                security_profile=options["profile"],
            )
        except WeakStationPassword as exc:
            raise CommandError(str(exc)) from exc
        skipped = len(set(options["station_ids"])) - result.created - result.updated
        self.stdout.write(f"created {result.created}, updated {result.updated}, unchanged {skipped}")
        if result.elsewhere:
            shown = ", ".join(result.elsewhere[:10]) + (" ..." if len(result.elsewhere) > 10 else "")
            self.stderr.write(f"owned by another organisation, left there (move with `station assign`): {shown}")

    def _assign(self, options: dict[str, Any]) -> None:
        organisation = _organisation(options["org"], create=False)
        try:
            result = station_ownership_set(station_ids=options["station_ids"], organisation=organisation)
        except FleetError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{result.assigned} stations moved to {organisation.slug}")

    def _accept(self, options: dict[str, Any]) -> None:
        client = f"cli:{_os_user()}"
        in_process = bool(settings.REDIS_URL)  # else the server holding the socket triggers the boot (as _call)
        try:
            result = station_accept(
                station_id=options["station_id"],
                actor_user_id=None,
                actor_label=client,
                trigger=in_process,
                timeout=options["timeout"],
            )
        except StationUnknown as exc:
            raise CommandError(f"no station {exc}") from exc
        note = "booting again now" if result.triggered else result.note
        if not in_process and result.previous != BootStatus.ACCEPTED:
            online = Station.objects.filter(station_id=options["station_id"], online=True).exists()
            note = self._boot_trigger_remote(options, client) if online else "offline: accepted at its next boot"
        self.stdout.write(f"{options['station_id']}: {result.previous} -> Accepted ({note})")

    def _boot_trigger_remote(self, options: dict[str, Any], client: str) -> str:
        try:
            with _call_key(options["user"]) as api_key:
                answer = station_call_remote(
                    station_id=options["station_id"],
                    action="TriggerMessage",
                    payload=BOOT_TRIGGER,
                    timeout=options["timeout"],
                    server=options["server"],
                    api_key=api_key,
                    client=client,
                )
        except (RemoteCallError, CommandError) as exc:  # accepted all the same: Accepted at its next boot
            within = f"{settings.OCPP_BOOT_RECHECK_S:g} s"
            return f"boot not triggered ({exc}); its connection serves it within {within}, Accepted at its next boot"
        return "booting again now" if answer.get("status") == "Accepted" else f"TriggerMessage {answer.get('status')}"

    def _rotate_password(self, options: dict[str, Any]) -> None:
        client = f"cli:{_os_user()}"
        failed = []
        for station_id in dict.fromkeys(options["station_ids"]):
            if settings.REDIS_URL:
                try:
                    rotation = station_password_rotate(
                        station_id=station_id, actor_user_id=None, actor_label=client, timeout=options["timeout"]
                    )
                except StationUnknown:
                    rotation = PasswordRotation(station_id, "StationUnknown", False)
            else:  # through the server holding the socket; its station_call stores the pending hash the same way
                rotation = self._rotate_remote(options, station_id, client)
            note = "the new one is valid now; the old one until the station uses the new one"
            self.stdout.write(f"{station_id}: {rotation.status}" + (f" ({note})" if rotation.adopted else ""))
            if not rotation.adopted:
                failed.append(station_id)
        if failed:
            raise CommandError(f"{len(failed)} station(s) kept their password: {', '.join(failed[:10])}")

    def _rotate_remote(self, options: dict[str, Any], station_id: str, client: str) -> PasswordRotation:
        try:
            with _call_key(options["user"]) as api_key:
                answer = station_call_remote(
                    station_id=station_id,
                    action="SetVariables",
                    payload=rotation_payload(password_generate()),
                    timeout=options["timeout"],
                    server=options["server"],
                    api_key=api_key,
                    client=client,
                )
        except RemoteCallError as exc:
            return PasswordRotation(station_id, f"failed: {exc}", False)
        status = rotation_status(answer)
        return PasswordRotation(station_id, status, status in ADOPTED)

    def _call(self, options: dict[str, Any]) -> None:
        try:
            payload = json.loads(options["payload"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"payload is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise CommandError("payload must be a JSON object")
        client = f"cli:{_os_user()}"
        if settings.REDIS_URL:
            try:
                result = station_call(
                    station_id=options["station_id"],
                    action=options["action"],
                    payload=payload,
                    actor_user_id=None,
                    actor_label=client,
                    timeout=options["timeout"],
                )
            except StationCallError as exc:
                raise CommandError(f"{type(exc).__name__}: {exc}") from exc
        else:
            with _call_key(options["user"]) as api_key:
                try:
                    result = station_call_remote(
                        station_id=options["station_id"],
                        action=options["action"],
                        payload=payload,
                        timeout=options["timeout"],
                        server=options["server"],
                        api_key=api_key,
                        client=client,
                    )
                except RemoteCallError as exc:
                    raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(result, indent=2))

    def _ledger_check(self, options: dict[str, Any]) -> None:
        try:
            with Path(options["ledger"]).open(encoding="utf-8") as lines:
                entries, torn = ledger_read(lines)
        except OSError as exc:
            raise CommandError(f"cannot read the ledger: {exc}") from exc
        report = ledger_compare(entries=entries)
        report.torn_lines = torn
        for problem in report.problems:
            self.stderr.write(problem)
        if torn:
            self.stderr.write(f"{torn} unreadable ledger lines skipped (an agent killed while writing one)")
        self.stdout.write(report.summary())
        if not report.ok:
            raise CommandError(f"the ledger does not match what is stored: {report.summary()}")


CALL_KEY_LIFETIME = timedelta(minutes=5)


@contextlib.contextmanager
def _call_key(username: str | None) -> Iterator[str]:
    """The key for one call through the server: ``$VPP_API_KEY``, else a key of scope ``command`` issued to a staff
    user for this call only (it expires in 5 minutes and is revoked as soon as the call ends)."""
    supplied = os.environ.get("VPP_API_KEY", "").strip()
    if supplied:
        yield supplied
        return
    staff = get_user_model().objects.filter(is_active=True, is_staff=True)
    user = staff.filter(username=username).first() if username else staff.filter(is_superuser=True).first()
    if user is None:
        raise CommandError(
            f"no active staff user {username!r}" if username else "no active superuser: give --user or $VPP_API_KEY"
        )
    key, raw = api_key_issue(
        user=user, scopes=[ApiScope.COMMAND], expires_at=timezone.now() + CALL_KEY_LIFETIME, name="station call (cli)"
    )
    try:
        yield raw
    finally:
        api_key_revoke(key=key)


def _organisation(slug: str, *, create: bool) -> Organisation:
    if create:
        organisation, _ = Organisation.objects.get_or_create(slug=slug, defaults={"name": slug})
        return organisation
    found = Organisation.objects.filter(slug=slug).first()
    if found is None:
        raise CommandError(f"no organisation {slug!r} (create it in the admin, or pass --create-org)")
    return found


def _password(path: str | None) -> str:
    """The station password from ``path`` (its first line) or ``$STATION_PASSWORD``; never from the command line."""
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read the password file: {exc}") from exc
        lines = text.splitlines()
        password = lines[0] if lines else ""
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise CommandError(f"no password: pass --password-file FILE or set ${PASSWORD_ENV}")
    return password


def _passwords_write(path: str, passwords: dict[str, str]) -> None:
    """``ID<TAB>PASSWORD`` lines into a new file only its owner can read (refuses to overwrite one)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot create the passwords file: {exc}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(f"{sid}\t{raw}\n" for sid, raw in passwords.items())


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (containers without a passwd entry)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"
