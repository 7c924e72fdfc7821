"""Seed the demo: an operator (admin), two organisations with their own people, stations and fleets (the demo
stations split between them, so each manager sees only their own), the market set-up, the demo market
(:mod:`vpp.demo_market`) and a past week of regulation generated through the real bidding, dispatch, scoring and
settlement code, labelled simulated (:mod:`vpp.demo_history`; ``--history-days 0`` skips it).

Idempotent: running it again changes nothing that is already there (passwords come from var/ or the env); the
history only gains the days missing since the last run.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from fleet.seeding import DEMO, HARBOUR, demo_fleet_seed, demo_organisation
from fleet.services.accounts import user_add
from fleet.services.stations import stations_provision
from vpp.demo import DEMO_MEMBERS, demo_credentials
from vpp.demo_history import DAYS, demo_history_generate
from vpp.demo_market import demo_product, demo_reserve_product
from vpp.demo_peak import demo_peak_seed
from vpp.progress import progress_bar


class Command(BaseCommand):
    help = "Create the demo admin, demo stations <prefix>-1..N, the demo fleet and market configuration."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stations", type=int, default=10)
        parser.add_argument("--id-prefix", default="demo")
        parser.add_argument(
            "--history-days", type=int, default=DAYS, help=f"days of simulated history to generate (default {DAYS})"
        )

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
        # The first half of the stations (and their cars) are the demo operator's, the rest Harbour Logistics'.
        split = (len(ids) + 1) // 2
        tenants = ((DEMO, ids[:split], 40, 7), (HARBOUR, ids[split:], 20, 11))
        now = timezone.now()
        for tenant, station_ids, vehicles, seed in tenants:
            if station_ids:  # in process: the password never goes through an argument list
                stations_provision(
                    station_ids=station_ids,
                    password=creds.station_password,
                    organisation=demo_organisation(tenant),
                    update=True,
                )
            demo_fleet_seed(now=now, vehicles=vehicles, stations=station_ids, seed=seed, tenant=tenant)
        for username, role, organisation in DEMO_MEMBERS:
            user_add(username=username, password=creds.member_password, role=role, organisation_slug=organisation)
        if "markets" in get_commands():
            call_command("markets", "seed")
        demo_product()
        demo_reserve_product()
        if options["history_days"] > 0:
            with progress_bar("simulated history", None) as update:

                def step(done: int, total: int, label: str) -> None:
                    update(done, description=f"simulated history: {label}", total=total)

                history = demo_history_generate(now=timezone.now(), days=options["history_days"], progress=step)
            self.stdout.write(
                f"Simulated history: {history.blocks} blocks, {history.awards} awards, {history.settlements} "
                f"settlements, {history.meter_values} meter values (labelled simulated)"
            )
            for why in history.skipped:
                self.stdout.write(f"  not simulated: {why}")
        depot = demo_peak_seed(now=timezone.now(), station_ids=ids[:split], history=options["history_days"] > 0)
        self.stdout.write(f"Demo depot: {depot}")
        members = ", ".join(username for username, _, _ in DEMO_MEMBERS)
        self.stdout.write(
            self.style.SUCCESS(f"Demo ready: operator '{creds.admin_username}', members {members}; {len(ids)} stations")
        )
