"""Seed the demo: an admin user, demo stations for the simulated fleet, the demo fleet and market set-up.

Idempotent: running it again changes nothing that is already there (passwords come from var/ or the env).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandParser

from fleet.seeding import demo_organisation
from fleet.services.stations import stations_provision
from vpp.demo import demo_credentials


class Command(BaseCommand):
    help = "Create the demo admin, demo stations <prefix>-1..N, the demo fleet and market configuration."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stations", type=int, default=10)
        parser.add_argument("--id-prefix", default="demo")

    def handle(self, *args: Any, **options: Any) -> None:
        creds = demo_credentials()
        user_model = get_user_model()
        admin, created = user_model.objects.get_or_create(
            username=creds.admin_username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created or not admin.check_password(creds.admin_password):
            admin.set_password(creds.admin_password)
            admin.save(update_fields=["password"])
        ids = [f"{options['id_prefix']}-{n}" for n in range(1, options["stations"] + 1)]
        commands = get_commands()
        if ids:  # in process: the password never goes through an argument list (it may also start with "-")
            stations_provision(
                station_ids=ids, password=creds.station_password, organisation=demo_organisation(), update=True
            )
        if "fleet" in commands:
            call_command("fleet", "seed", "--stations", *ids, "--member", creds.admin_username)
        if "markets" in commands:
            call_command("markets", "seed")
        self.stdout.write(self.style.SUCCESS(f"Demo ready: admin '{creds.admin_username}', {len(ids)} stations"))
