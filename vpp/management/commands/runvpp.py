"""Run the whole product on one machine: Daphne, the Celery side and a simulated fleet of chargers.

With REDIS_URL set, a real Celery worker (with beat) consumes from Redis. Without it, tasks run eagerly in the
process that enqueues them, so the Celery side is a beat process that runs the periodic tasks itself.
The simulated fleet is the edge agent's own ``simulate`` command: real OCPP over real WebSockets. The demo's grid
operator (``demo_market``: regulation awards for the demo fleets and the RegD signal, looped) regulates it live.

The console stays readable: Daphne's access log is off (``--access-log`` turns it on), Celery logs warnings only
(``--celery-loglevel``), and the address and the demo's logins are printed last, once everything has started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from vpp.demo import DEMO_MEMBERS, DemoCredentials, demo_credentials


class Command(BaseCommand):
    help = "Start Daphne, Celery and a simulated fleet of chargers with edge agents; Ctrl-C stops them all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--fleet", type=int, default=10, help="simulated chargers with edge agents (0: none)")
        parser.add_argument("--id-prefix", default="demo")
        parser.add_argument(
            "--ledger", default=None, help="the fleet appends a line per CALL the CSMS acknowledged to this file"
        )
        parser.add_argument(
            "--workers", type=int, default=1, help="Daphne processes on one socket (more than 1 needs REDIS_URL)"
        )
        parser.add_argument("--access-log", action="store_true", help="print Daphne's access log (one line a request)")
        parser.add_argument("--celery-loglevel", default="WARNING", help="Celery's log level on the console")
        parser.add_argument(
            "--no-market", action="store_true", help="do not start the demo's grid operator (awards and signal)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        if options["workers"] > 1 and not settings.REDIS_URL:
            raise CommandError("--workers > 1 needs REDIS_URL: workers reach each other's stations through Redis")
        if _port_busy(host, port):
            raise CommandError(f"{host}:{port} is already in use; pass --port (make run PORT=...)")
        bin_dir = Path(sys.executable).parent
        children: list[tuple[str, subprocess.Popen[bytes]]] = []
        _stop_on_signals()
        try:
            verbosity = "1" if options["access_log"] else "0"
            children.append(("daphne", _spawn(_daphne_command(host, port, options["workers"], verbosity))))
            children.append(("celery", _spawn(_celery_command(bin_dir, options["celery_loglevel"]))))
            _wait_for_port(host, port, timeout_s=30)
            creds = demo_credentials()
            if options["fleet"] > 0:
                # The station password goes in the environment, not argv: `ps` shows argv, and a generated
                # password may start with "-", which argparse would read as an option.
                agents_env = {"EDGE_AGENT_PASSWORD": creds.station_password}
                children.append(("edge-agents", _spawn(_fleet_command(bin_dir, host, port, options), agents_env)))
            if not options["no_market"]:
                children.append(("demo-market", _spawn(_market_command(host, port))))
                children.append(
                    (
                        "demo-peak",
                        _spawn([*_market_command(host, port)[:2], "demo_peak", "--csms", f"ws://{host}:{port}/ocpp"]),
                    )
                )
            settle_until = time.monotonic() + STARTUP_SETTLE_S
            while time.monotonic() < settle_until and not STOP["now"]:  # the children's start-up lines first
                time.sleep(0.1)
            if not STOP["now"]:
                self._banner(host, port, creds, options)
            _supervise(children, self)
        finally:
            _stop_all(children)

    def _banner(self, host: str, port: int, creds: DemoCredentials, options: dict[str, Any]) -> None:
        """What the person who typed ``make run`` needs, printed last: where, and who to sign in as."""
        out = self.stdout
        out.write("")
        if options["fleet"] > 0:
            out.write(f"Simulated fleet: {options['fleet']} chargers ({options['id_prefix']}-1 ...)")
        if not options["no_market"]:
            out.write(
                "Demo market: regulation and synchronized reserve awarded for the current hours, RegD test signal "
                "looped every 2 s, a reserve event 3 min after start and then hourly"
            )
        out.write(f"OCPP endpoint: ws://{host}:{port}/ocpp/<station_id>")
        out.write(self.style.SUCCESS(f"Dashboard: http://{host}:{port}/   admin: http://{host}:{port}/admin/"))
        out.write(f"Demo admin (operator): {creds.admin_username} / {creds.admin_password}")
        members = ", ".join(f"{username} ({role.replace('_', ' ')}, {org})" for username, role, org in DEMO_MEMBERS)
        out.write(f"Demo members: {members} / {creds.member_password}")
        out.write("Ctrl-C stops everything" + ("" if options["access_log"] else "; --access-log shows each request"))


#: Seconds to let the children print their start-up lines before the banner.
STARTUP_SETTLE_S = 2.0


def _daphne_command(host: str, port: int, workers: int, verbosity: str = "0") -> list[str]:
    # Verbosity 0: no access log (a line per request and per charger connection buries the logins); 1 with it.
    return [sys.executable, "-m", "vpp.serve", str(port), "", verbosity, "--host", host, "--workers", str(workers)]


def _market_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        str(Path(settings.BASE_DIR) / "manage.py"),
        "demo_market",
        "--server",
        f"http://{host}:{port}",
    ]


def _celery_command(bin_dir: Path, loglevel: str = "WARNING") -> list[str]:
    celery = str(bin_dir / "celery")
    schedule = str(Path(settings.VAR_DIR) / "celerybeat-schedule")
    if settings.REDIS_URL:
        return [
            celery,
            "--quiet",
            "-A",
            "vpp",
            "worker",
            "--beat",
            "--schedule",
            schedule,
            "--loglevel",
            loglevel,
            "--concurrency",
            "2",
        ]
    # Eager mode: beat itself runs each periodic task when it falls due. --quiet: no start-up banner.
    return [celery, "--quiet", "-A", "vpp", "beat", "--schedule", schedule, "--loglevel", loglevel]


def _fleet_command(bin_dir: Path, host: str, port: int, options: dict[str, Any]) -> list[str]:
    agent = shutil.which("edge-agent", path=str(bin_dir)) or "edge-agent"
    ledger = ["--ledger", str(options["ledger"])] if options.get("ledger") else []
    return [
        agent,
        "simulate",
        "--count",
        str(options["fleet"]),
        "--csms",
        f"ws://{host}:{port}/ocpp",
        "--id-prefix",
        options["id_prefix"],
        *ledger,
    ]


def _spawn(cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Own process group so Ctrl-C in the terminal reaches us first and we stop children in order.
    return subprocess.Popen(cmd, env={**os.environ, **(extra_env or {})}, start_new_session=True)  # noqa: S603


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def _wait_for_port(host: str, port: int, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_busy(host, port):
            return
        time.sleep(0.2)
    raise CommandError(f"Daphne did not start listening on {host}:{port} within {timeout_s:.0f} s")


#: Set by SIGINT / SIGTERM (handlers installed before the first child starts: a Ctrl-C during start-up stops
#: everything in order, as one later does).
STOP = {"now": False}


def _stop_on_signals() -> None:
    STOP["now"] = False

    def _on_signal(signum: int, _frame: object) -> None:
        STOP["now"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _supervise(children: list[tuple[str, subprocess.Popen[bytes]]], cmd: BaseCommand) -> None:
    while not STOP["now"]:
        for name, proc in children:
            code = proc.poll()
            if code is not None:
                cmd.stderr.write(f"{name} exited with status {code}; stopping the rest")
                return
        time.sleep(0.5)


def _stop_all(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    # Reverse order: the simulated fleet first, then Celery, then the server the fleet talks to.
    for _, proc in reversed(children):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for _, proc in reversed(children):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
