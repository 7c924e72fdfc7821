"""The multi-node deployment as the README starts it (``manage.py runcluster``, what ``make run-cluster`` runs), on free
ports, for the tests across nodes (tests/vpp/test_cluster.py) and ``bench/multinode.py``: N Daphne nodes behind the
real ``haproxy`` on ``deploy/haproxy-cluster.cfg``, a Celery worker, one beat, on the test's PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import psutil
from django.conf import settings

from tests.live import free_port, wait_listening
from vpp.management.commands.runcluster import haproxy_binary

ROOT = Path(__file__).resolve().parents[1]


def cluster_unavailable() -> str | None:
    """Why the multi-node deployment cannot run here (a skip reason), or None."""
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql" or not settings.REDIS_URL:
        return (
            "several nodes need PostgreSQL and Redis shared by all (DATABASE_URL=postgres://..., REDIS_URL=redis://...;"
            " the embedded SQLite and in-memory layer belong to one process)"
        )
    if haproxy_binary() is None:
        return "haproxy is not installed (apt-get install haproxy; CI's .ci/run installs it)"
    return None


def database_url() -> str:
    """The database Django uses now (under pytest, the test database), as a URL for the processes started here."""
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Cluster:
    """``manage.py runcluster --nodes N`` on free ports, no simulated fleet, no demo market; a node that dies stays
    down unless ``restart_after`` is given. Its console (every node's log included) goes to ``var_dir/cluster.log``."""

    def __init__(
        self,
        var_dir: Path,
        *,
        nodes: int = 2,
        restart_after: float | None = None,
        access_log: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.node_ports: list[int] = []
        while len(self.node_ports) < nodes:
            if (port := free_port()) not in (self.port, *self.node_ports):
                self.node_ports.append(port)
        self.restart_after, self.access_log = restart_after, access_log
        self.log = var_dir / "cluster.log"
        self.env = {**os.environ, "DATABASE_URL": database_url(), "VPP_VAR_DIR": str(var_dir), **(extra_env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.sessions_before = 0

    @property
    def ws(self) -> str:
        """The balancer, as the stations see it: ``ws://127.0.0.1:PORT`` (append ``/ocpp/<id>``)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def node_http(self, n: int) -> str:
        """Node ``n`` (1-based) directly, bypassing the balancer."""
        return f"http://127.0.0.1:{self.node_ports[n - 1]}"

    def start(self) -> Self:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.sessions_before = _sessions()
        restart = ["--restart-after", str(self.restart_after)] if self.restart_after is not None else ["--no-restart"]
        argv = [
            sys.executable, "manage.py", "runcluster", "--host", "127.0.0.1", "--port", str(self.port),
            "--nodes", str(len(self.node_ports)), "--node-ports", ",".join(map(str, self.node_ports)),
            "--fleet", "0", "--no-market", "--celery-loglevel", "WARNING", *restart,
            *(["--access-log"] if self.access_log else []),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_listening(self.process, self.port, within=120)
        deadline = time.monotonic() + 60
        while not all(self.healthy(n) for n in range(1, len(self.node_ports) + 1)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes did not report healthy within 60 s; see {self.log}")
            time.sleep(0.5)
        return self

    def healthy(self, n: int) -> bool:
        return get_json(f"{self.node_http(n)}/healthz")[0] == 200

    def node_process(self, n: int) -> psutil.Process | None:
        """Node ``n``'s server process (``vpp.serve <its port>``), if it runs."""
        if self.process is None:
            return None
        port = str(self.node_ports[n - 1])
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "vpp.serve" in cmdline and port in cmdline:
                return child
        return None

    def kill_node(self, n: int) -> None:
        """SIGKILL node ``n``: no goodbye to its stations, no flush; the kernel closes its sockets."""
        node = self.node_process(n)
        if node is None:
            raise RuntimeError(f"node {n} is not running")
        node.send_signal(signal.SIGKILL)
        node.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Ctrl-C: runcluster stops its children in order
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            _sessions_back_to(self.sessions_before)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sessions(*, until_at_most: int | None = None, within: float = 10.0) -> int:
    """Sessions on the database besides this one; with ``until_at_most``, first wait (up to ``within``) for them to
    drop to that many: PostgreSQL ends a backend a moment after its client exits, and the test database cannot be
    truncated or dropped while one is left."""
    import psycopg

    db = settings.DATABASES["default"]
    params = {"host": db["HOST"] or "127.0.0.1", "port": db["PORT"] or 5432, "user": db["USER"], "dbname": db["NAME"]}
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + within
    with psycopg.connect(**params, autocommit=True) as conn:
        while True:
            row = conn.execute(sql).fetchone()
            count = int(row[0]) if row else 0
            if until_at_most is None or count <= until_at_most or time.monotonic() > deadline:
                return count
            time.sleep(0.1)


def _sessions_back_to(count: int) -> None:
    _sessions(until_at_most=count)


def get_json(url: str, *, timeout: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def post_json(url: str, body: dict[str, Any], *, api_key: str, timeout: float = 30.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
