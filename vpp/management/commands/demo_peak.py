"""``manage.py demo_peak --csms ws://HOST:PORT/ocpp``: the demo depot's main meter, live (``runvpp`` starts it).

An OCPP 2.1 client as the station ``demo-depot-meter`` sending the depot's simulated import (the load profile plus
its cars' present power) as MeterValues for EVSE 0 every 5 s, which the real-time controller shaves
(:mod:`vpp.demo_peak`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from vpp.demo_peak import depot_meter_run


class Command(BaseCommand):
    help = "Run the demo depot's simulated main meter against the CSMS (peak shaving, live)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--csms", default="ws://127.0.0.1:8000/ocpp")
        parser.add_argument("--period", type=float, default=5.0, help="seconds between readings")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = asyncio.Event()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(depot_meter_run(csms_url=options["csms"], stop=stop, period_s=options["period"]))
