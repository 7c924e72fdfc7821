"""``manage.py org add <slug> --name "<name>"`` and ``org list``: the organisations that own stations and fleets."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.models import Organisation
from fleet.services.accounts import organisation_add
from fleet.services.errors import FleetError


class Command(BaseCommand):
    help = "Organisations: 'add' creates (or renames) one, 'list' shows them with their members and stations."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="create an organisation, or rename an existing one")
        add.add_argument("slug")
        add.add_argument("--name", default="")
        sub.add_parser("list", help="list organisations")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            for org in Organisation.objects.order_by("slug"):
                members, stations = org.memberships.count(), org.station_ownerships.count()
                self.stdout.write(f"{org.slug}\t{org.name}\t{members} members\t{stations} stations")
            return
        try:
            org, created = organisation_add(slug=options["slug"], name=options["name"])
        except FleetError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"{'Created' if created else 'Updated'} organisation {org.slug}"))
