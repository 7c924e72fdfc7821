"""Run the product as several nodes on one machine: N Daphne nodes behind HAProxy, a Celery worker, ONE beat and ONE
utility-program runner, all on the same PostgreSQL and Redis; optionally the simulated fleet and the demo's grid
operator, pointed at the balancer. ``make run-cluster`` (README "Operations: several nodes").

Each node is ``python -m vpp.serve PORT`` on a port of its own (``--node-ports``, default the balancer's port + 1 ...
+ N), a process of its own as on a machine of its own: a station connected to one node is commanded from any other
through the Redis channel layer (chargers/fanout.py). HAProxy runs ``deploy/haproxy-cluster.cfg``: leastconn over the
nodes, health checks on ``/healthz``. The nodes believe the balancer's X-Forwarded-For only with the secret it adds,
generated once into ``$VPP_VAR_DIR/cluster-proxy-secret`` (0600) and handed to HAProxy and to the nodes through the
environment and a file, never argv.

A node that exits (killed, crashed) is started again after ``--restart-after`` seconds while the others serve its
stations (``--no-restart`` leaves it down: the fault drill); any other process exiting stops everything, as Ctrl-C does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from vpp.demo import demo_credentials
from vpp.management.commands import runvpp
from vpp.management.commands.runvpp import STOP, _fleet_command, _market_command, _port_busy, _spawn

ROOT = Path(__file__).resolve().parents[3]
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy-cluster.cfg"
MAX_NODES = 8  # the server lines deploy/haproxy-cluster.cfg has (VPP_NODE1..VPP_NODE8)
NEEDS_SHARED = (
    "several nodes share one PostgreSQL and one Redis: set DATABASE_URL=postgres://user@host:5432/db and "
    "REDIS_URL=redis://host:6379/0 (the embedded SQLite file and in-memory channel layer belong to one process)"
)


def haproxy_binary() -> str | None:
    """Debian's haproxy is in /usr/sbin, often not on an unprivileged user's PATH."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def shared_services_missing() -> str | None:
    """Why this configuration cannot run several nodes, or None."""
    engine = str(settings.DATABASES["default"]["ENGINE"])
    if not settings.REDIS_URL or "postgresql" not in engine:
        return NEEDS_SHARED
    return None


def proxy_secret_file(var_dir: Path) -> Path:
    """The secret HAProxy adds as X-Proxy-Secret and the nodes expect (OCPP_PROXY_SECRET_FILE); made once, 0600."""
    path = var_dir / "cluster-proxy-secret"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path


def health_host() -> str:
    """A Host header every node accepts for the health check (its ALLOWED_HOSTS)."""
    for host in settings.ALLOWED_HOSTS:
        if host not in ("*", "") and not host.startswith("."):
            return host
    return "localhost"


@dataclass
class Node:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    died_at: float | None = None


class Command(runvpp.Command):
    help = "Start N Daphne nodes behind HAProxy, a Celery worker, one beat and the simulated fleet; Ctrl-C stops all."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(workers=1)
        parser.add_argument("--nodes", type=int, default=2, help=f"Daphne nodes (2..{MAX_NODES})")
        parser.add_argument(
            "--node-ports", default="", help="the nodes' ports, comma-separated (default: --port + 1 ... + N)"
        )
        parser.add_argument(
            "--restart-after", type=float, default=5.0, help="seconds before a node that exited is started again"
        )
        parser.add_argument("--no-restart", action="store_true", help="leave a node that exited down")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port, count = options["host"], options["port"], options["nodes"]
        if why := shared_services_missing():
            raise CommandError(why)
        haproxy = haproxy_binary()
        if haproxy is None:
            raise CommandError("haproxy is not installed (Debian: apt-get install haproxy)")
        if not 2 <= count <= MAX_NODES:
            raise CommandError(f"--nodes must be 2..{MAX_NODES} (deploy/haproxy-cluster.cfg has {MAX_NODES} slots)")
        ports = _node_ports(options["node_ports"], port, count)
        for p in [port, *ports]:
            if _port_busy("127.0.0.1" if p in ports else host, p):
                raise CommandError(
                    f"port {p} is already in use; pass --port / --node-ports (make run-cluster PORT=...)"
                )
        secret_file = proxy_secret_file(Path(settings.VAR_DIR))
        nodes = [Node(f"node{n}", p) for n, p in enumerate(ports, start=1)]
        verbosity = "1" if options["access_log"] else "0"
        node_env = {"OCPP_TRUSTED_PROXIES": "127.0.0.1/32", "OCPP_PROXY_SECRET_FILE": str(secret_file)}
        others: list[tuple[str, subprocess.Popen[bytes]]] = []
        runvpp._stop_on_signals()
        try:
            for node in nodes:
                node.process = _spawn_node(node, verbosity, node_env)
            for node in nodes:
                _wait_serving(node.name, node.process, "127.0.0.1", node.port)
            lb_env = {
                "VPP_PROXY_SECRET": secret_file.read_text().strip(),
                "VPP_LB_ADDR": host,
                "VPP_LB_PORT": str(port),
                "VPP_HEALTH_HOST": health_host(),
                **{f"VPP_NODE{n}": f"127.0.0.1:{p}" for n, p in enumerate(ports, start=1)},
            }
            others.append(("haproxy", _spawn([haproxy, "-db", "-f", str(HAPROXY_CONFIG)], lb_env)))
            _wait_serving("haproxy", others[-1][1], host, port)
            bin_dir = Path(sys.executable).parent
            others.append(("celery-worker", _spawn(_celery_worker(bin_dir, options["celery_loglevel"]))))
            others.append(("celery-beat", _spawn(_celery_beat(bin_dir, options["celery_loglevel"]))))
            manage = [sys.executable, str(ROOT / "manage.py")]
            others.append(("utility", _spawn([*manage, "utility", "run"])))
            creds = demo_credentials() if (options["fleet"] > 0 or not options["no_market"]) else None
            if options["fleet"] > 0 and creds is not None:
                agents_env = {"EDGE_AGENT_PASSWORD": creds.station_password}
                others.append(("edge-agents", _spawn(_fleet_command(bin_dir, host, port, options), agents_env)))
            if not options["no_market"]:
                others.append(("demo-market", _spawn(_market_command(host, port))))
                peak = [*manage, "demo_peak", "--csms", f"ws://{host}:{port}/ocpp"]
                others.append(("demo-peak", _spawn(peak)))
            settle_until = time.monotonic() + runvpp.STARTUP_SETTLE_S
            while time.monotonic() < settle_until and not STOP["now"]:
                time.sleep(0.1)
            if not STOP["now"]:
                self._layout(host, port, nodes)
                if creds is not None:
                    self._banner(host, port, creds, options)
            self._supervise_cluster(nodes, others, options, verbosity, node_env)
        finally:
            runvpp._stop_all([*[(n.name, n.process) for n in nodes if n.process is not None], *others])

    def _layout(self, host: str, port: int, nodes: list[Node]) -> None:
        out = self.stdout
        out.write(f"Balancer (HAProxy, deploy/haproxy-cluster.cfg): {host}:{port}, leastconn, health checks /healthz")
        for node in nodes:
            pid = node.process.pid if node.process is not None else "-"
            out.write(f"  {node.name}: python -m vpp.serve {node.port}  (127.0.0.1:{node.port}, pid {pid})")
        out.write("Celery: one worker, one beat; utility programs: one runner")

    def _supervise_cluster(
        self,
        nodes: list[Node],
        others: list[tuple[str, subprocess.Popen[bytes]]],
        options: dict[str, Any],
        verbosity: str,
        node_env: dict[str, str],
    ) -> None:
        restart = None if options["no_restart"] else float(options["restart_after"])
        while not STOP["now"]:
            for name, proc in others:
                code = proc.poll()
                if code is not None:
                    self.stderr.write(f"{name} exited with status {code}; stopping the rest")
                    return
            for node in nodes:
                self._watch_node(node, restart, verbosity, node_env)
            if restart is None and all(node.died_at is not None for node in nodes):
                self.stderr.write("every node is down; stopping the rest")
                return
            time.sleep(0.5)

    def _watch_node(self, node: Node, restart: float | None, verbosity: str, node_env: dict[str, str]) -> None:
        """Notice a node that exited; start it again ``restart`` seconds later (None: never)."""
        if node.died_at is not None:
            if restart is not None and time.monotonic() - node.died_at >= restart:
                node.process, node.died_at = _spawn_node(node, verbosity, node_env), None
                self.stdout.write(f"{node.name} started again (pid {node.process.pid})")
            return
        code = node.process.poll() if node.process is not None else None
        if code is not None:
            node.died_at = time.monotonic()
            then = "left down" if restart is None else f"starting it again in {restart:g} s"
            self.stderr.write(f"{node.name} exited with status {code}; the other nodes serve its stations; {then}")


def _wait_serving(name: str, process: subprocess.Popen[bytes] | None, host: str, port: int) -> None:
    """Return once ``process`` listens on ``port``; stop at once, saying so, if it exits first."""
    deadline = time.monotonic() + 60
    while not _port_busy(host, port):
        if process is None or process.poll() is not None:
            raise CommandError(f"{name} exited before listening on {host}:{port} (its output is above)")
        if time.monotonic() > deadline or STOP["now"]:
            raise CommandError(f"{name} did not start listening on {host}:{port} within 60 s")
        time.sleep(0.2)


def _node_ports(spec: str, port: int, count: int) -> list[int]:
    if not spec:
        return [port + n for n in range(1, count + 1)]
    try:
        ports = [int(p) for p in spec.split(",")]
    except ValueError:
        raise CommandError(f"--node-ports: comma-separated port numbers, got {spec!r}") from None
    if len(ports) != count or len(set(ports)) != count or port in ports:
        raise CommandError(f"--node-ports: {count} distinct ports other than the balancer's {port}, got {spec!r}")
    return ports


def _spawn_node(node: Node, verbosity: str, node_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OCPP_PROXY_SECRET"}  # the file replaces it (one of the two)
    # Each node listens on 127.0.0.1 only: the balancer is its one client (a node elsewhere is firewalled to it).
    command = [sys.executable, "-m", "vpp.serve", str(node.port), "", verbosity, "--host", "127.0.0.1"]
    return subprocess.Popen(command, env={**env, **node_env}, start_new_session=True)  # noqa: S603


def _celery_worker(bin_dir: Path, loglevel: str) -> list[str]:
    return [str(bin_dir / "celery"), "--quiet", "-A", "vpp", "worker", "--loglevel", loglevel, "--concurrency", "2"]


def _celery_beat(bin_dir: Path, loglevel: str) -> list[str]:
    # ONE beat for the whole cluster: two would enqueue every periodic task twice.
    schedule = str(Path(settings.VAR_DIR) / "celerybeat-schedule")
    return [str(bin_dir / "celery"), "--quiet", "-A", "vpp", "beat", "--schedule", schedule, "--loglevel", loglevel]
