"""``python manage.py utility run [--program ID ...]``: run the utility programs' clients (``vpp.utility.runner``)."""

from __future__ import annotations

import asyncio
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from vpp.utility.runner import programs_run


class Command(BaseCommand):
    help = "Run the enabled utility programs' clients (OpenADR VENs, IEEE 2030.5) until interrupted."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        run = sub.add_parser("run", help="connect every enabled program (or those named) and dispatch their events")
        run.add_argument("--program", type=int, action="append", help="program id (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            asyncio.run(programs_run(ids=options.get("program")))
        except KeyboardInterrupt:
            self.stdout.write("stopped")
