"""``manage.py token add|list|revoke``: issue, list and revoke API keys (hashed at rest; a key is printed once).

python manage.py token add alice --scopes read,signal --expires 30d [--org acme] [--portfolio fleet-3] [--name N]
python manage.py token list alice
python manage.py token revoke <prefix>
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.models import ApiKey, Organisation
from fleet.services.accounts import api_key_issue, api_key_revoke
from fleet.services.errors import FleetError

_DURATION = re.compile(r"^(\d+)([dh])$")


def expiry_of(text: str, *, now: datetime) -> datetime:
    """``30d`` / ``12h`` from now, or an ISO 8601 instant with its offset."""
    match = _DURATION.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise CommandError(f"--expires: give e.g. 30d, 12h or an ISO 8601 instant, not {text!r}") from exc
    if when.tzinfo is None:
        raise CommandError("--expires: an ISO 8601 instant needs its UTC offset")
    return when


class Command(BaseCommand):
    help = "API keys: 'add' issues one (printed once), 'list' shows a user's keys, 'revoke' revokes one by prefix."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="issue a key for a user and print it once")
        add.add_argument("username")
        add.add_argument("--scopes", required=True, help="comma-separated: read, signal, command, fleet:write")
        add.add_argument("--expires", required=True, help="30d, 12h or an ISO 8601 instant (at most 366 days)")
        add.add_argument("--org", default=None, help="organisation slug the key is limited to")
        add.add_argument("--portfolio", default="", help="regulation portfolio a signal key is limited to")
        add.add_argument("--name", default="", help="a label (default: username and date)")
        listing = sub.add_parser("list", help="a user's keys (prefix, name, scopes, expiry, revoked)")
        listing.add_argument("username")
        revoke = sub.add_parser("revoke", help="revoke a key by its prefix (the part before the dot)")
        revoke.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _user(self, username: str) -> Any:
        try:
            return get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user {username!r}") from exc

    def _add(self, options: dict[str, Any]) -> None:
        user = self._user(options["username"])
        organisation = None
        if options["org"]:
            organisation = Organisation.objects.filter(slug=options["org"]).first()
            if organisation is None:
                raise CommandError(f"no organisation {options['org']!r}")
        try:
            key, raw = api_key_issue(
                user=user,
                scopes=[s.strip() for s in options["scopes"].split(",") if s.strip()],
                expires_at=expiry_of(options["expires"], now=timezone.now()),
                organisation=organisation,
                portfolio=options["portfolio"],
                name=options["name"],
            )
        except FleetError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"Key {key.prefix} for {user.get_username()} ({', '.join(key.scopes)}), expires "
            f"{key.expiry_date:%Y-%m-%d %H:%M} UTC. It is shown this once: store it now."
        )
        self.stdout.write(raw)

    def _list(self, options: dict[str, Any]) -> None:
        user = self._user(options["username"])
        for key in ApiKey.objects.filter(user=user).select_related("organisation").order_by("-created"):
            state = "revoked" if key.revoked else "expired" if key.has_expired else "active"
            expiry = f"{key.expiry_date:%Y-%m-%d %H:%M}" if key.expiry_date else "never"
            org = key.organisation.slug if key.organisation else "-"
            self.stdout.write(
                f"{key.prefix}  {state:<7}  expires {expiry}  scopes {','.join(key.scopes)}  org {org}  "
                f"portfolio {key.portfolio or '-'}  {key.name}"
            )

    def _revoke(self, options: dict[str, Any]) -> None:
        key = ApiKey.objects.filter(prefix=options["prefix"]).first()
        if key is None:
            raise CommandError(f"no key with prefix {options['prefix']!r}")
        api_key_revoke(key=key)
        self.stdout.write(self.style.SUCCESS(f"Revoked {key.prefix} ({key.name}) of {key.user}"))
