"""``station add <id>... --password PW`` provisions stations; ``station call <id> <Action> '<json>'`` commands one."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargers.models import BootStatus
from chargers.passwords import WeakStationPassword
from chargers.remote import RemoteCallError, station_call_remote
from chargers.services.provisioning import stations_add
from chargers.services.station_call import StationCallError, station_call


class Command(BaseCommand):
    help = "Provision OCPP stations (add) or send a CSMS-initiated message to one and print its answer (call)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        add = sub.add_parser("add", help="create stations; many ids in one call for fleets and load tests")
        add.add_argument("station_ids", nargs="+", metavar="ID")
        add.add_argument("--password", required=True, help="OCPP BasicAuthPassword, 16-40 characters")
        add.add_argument("--update", action="store_true", help="also reset the password of existing stations")
        add.add_argument("--boot-status", choices=BootStatus.values, default=BootStatus.ACCEPTED)
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
        call.add_argument("--user", default=None, help="staff user named in the hint when $VPP_API_KEY is unset")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "add":
            self._add(options)
        else:
            self._call(options)

    def _add(self, options: dict[str, Any]) -> None:
        try:
            created, updated = stations_add(
                station_ids=options["station_ids"],
                password=options["password"],
                update=options["update"],
                boot_status=options["boot_status"],
            )
        except WeakStationPassword as exc:
            raise CommandError(str(exc)) from exc
        skipped = len(set(options["station_ids"])) - created - updated
        self.stdout.write(f"created {created}, updated {updated}, unchanged {skipped}")

    def _call(self, options: dict[str, Any]) -> None:
        try:
            payload = json.loads(options["payload"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"payload is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise CommandError("payload must be a JSON object")
        if settings.REDIS_URL:
            try:
                result = station_call(
                    station_id=options["station_id"],
                    action=options["action"],
                    payload=payload,
                    timeout=options["timeout"],
                )
            except StationCallError as exc:
                raise CommandError(f"{type(exc).__name__}: {exc}") from exc
        else:
            try:
                result = station_call_remote(
                    station_id=options["station_id"],
                    action=options["action"],
                    payload=payload,
                    timeout=options["timeout"],
                    server=options["server"],
                    username=options["user"],
                )
            except RemoteCallError as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(result, indent=2))
