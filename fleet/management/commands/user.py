"""``manage.py user add <username> --org <slug> --role fleet-manager|bidding-admin|operator|utility``.

The password comes from ``--password-file`` (its first line) or the environment variable ``VPP_USER_PASSWORD``,
never from the command line (argv shows in ``ps`` and in shell history).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.services.accounts import OPERATOR, user_add
from fleet.services.errors import FleetError

PASSWORD_ENV = "VPP_USER_PASSWORD"  # noqa: S105 - the name of the variable, not a password
ROLES = ("fleet-manager", "bidding-admin", "operator", "utility")


class Command(BaseCommand):
    help = "Users: 'add' creates (or updates) a user with one role, in an organisation unless an operator."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="create or update a user")
        add.add_argument("username")
        add.add_argument("--role", required=True, choices=ROLES)
        add.add_argument("--org", default=None, help="organisation slug (every role but operator)")
        add.add_argument("--password-file", type=Path, default=None, help=f"else ${PASSWORD_ENV}")

    def handle(self, *args: Any, **options: Any) -> None:
        password = _password(options["password_file"])
        role = OPERATOR if options["role"] == "operator" else options["role"].replace("-", "_")
        try:
            user, created = user_add(
                username=options["username"], password=password, role=role, organisation_slug=options["org"]
            )
        except FleetError as exc:
            raise CommandError(str(exc)) from None
        where = "" if role == OPERATOR else f" in {options['org']}"
        self.stdout.write(
            self.style.SUCCESS(f"{'Created' if created else 'Updated'} {user.username}: {options['role']}{where}")
        )


def _password(path: Path | None) -> str:
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise CommandError(f"cannot read the password file: {exc}") from None
        return lines[0] if lines else ""
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise CommandError(f"give the password in a file (--password-file F) or in ${PASSWORD_ENV}")
    return password
