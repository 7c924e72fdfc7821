"""``manage.py fleet seed``: the demo fleet from the EV session data (see fleet/data/ev-sessions/README.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.seeding import PROFILES, demo_fleet_seed


class Command(BaseCommand):
    help = "Fleet administration. 'seed': create the demo organisation, fleet and vehicles (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        seed = sub.add_parser("seed", help="seed a realistic demo fleet")
        seed.add_argument("--vehicles", type=int, default=40)
        seed.add_argument("--stations", nargs="*", default=None, help="station ids to plug the present cars into")
        seed.add_argument("--profile", choices=PROFILES, default="private")
        seed.add_argument("--seed", type=int, default=7, help="random seed (same seed, same fleet)")
        seed.add_argument("--member", action="append", default=None, help="username to add to the organisation")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] != "seed":
            raise CommandError(f"unknown action {options['action']}")
        if options["vehicles"] < 0:
            raise CommandError("--vehicles must be >= 0")
        # Members are named (``demo_seed`` names the demo admin): the fleet layer knows no demo credentials.
        members = options["member"] or []
        result = demo_fleet_seed(
            now=timezone.now(),
            vehicles=options["vehicles"],
            stations=options["stations"],
            profile=options["profile"],
            seed=options["seed"],
            member_usernames=members,
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Fleet '{result.fleet}': {result.created} vehicles created, {result.plugged_in} plugged in now"
            )
        )
