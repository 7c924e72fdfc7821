"""``idtoken add <token> --type <IdTokenEnumType> --status <status> [--group <group token>]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chargers.models import IdTokenStatus
from chargers.services.provisioning import id_token_add

# IdTokenEnumType of OCPP 2.0.1 and 2.1.
ID_TOKEN_TYPES = [
    "Central",
    "DirectPayment",
    "eMAID",
    "EVCCID",
    "ISO14443",
    "ISO15693",
    "KeyCode",
    "Local",
    "MacAddress",
    "NoAuthorization",
    "VIN",
]


class Command(BaseCommand):
    help = "Provision identity tokens answered by Authorize and TransactionEvent."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        add = sub.add_parser("add", help="create or update a token")
        add.add_argument("token")
        add.add_argument("--type", required=True, choices=ID_TOKEN_TYPES)
        add.add_argument("--status", required=True, choices=IdTokenStatus.values)
        add.add_argument("--group", default=None, help="group id token (same type), created if missing")

    def handle(self, *args: Any, **options: Any) -> None:
        row = id_token_add(
            token=options["token"], type=options["type"], status=options["status"], group=options["group"]
        )
        group = f", group {row.group.id_token}" if row.group else ""
        self.stdout.write(f"{row.id_token} ({row.type}): {row.status}{group}")
