"""The fault drill: 20 edge agents regulating while the database pauses, Redis and the server restart, agents are
killed and poison frames arrive; afterwards the agents' ledgers must match what is stored, with nothing missing or
doubled, and every agent must be connected and regulating again.

Everything is real and on real sockets: the CSMS (``vpp.serve``) in its own process, talking to PostgreSQL through
a TCP proxy the test pauses, and to a redis-server of the test's own that it kills and restarts; the agents are
``edge-agent simulate`` processes writing ``--ledger`` files; the regulation signal goes through ``ws/regulation``.
The recovery times are printed (``pytest -s``) and bounded generously: the point is that each fault is survived
without a restart, not how fast.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import websockets.asyncio.client
import websockets.sync.client
from django.conf import settings
from django.db import connection
from websockets.typing import Subprotocol

from tests.drill import recovered, regulating_agents
from tests.faults import PausableTcpProxy, RedisProcess
from tests.live import free_port, wait_listening
from vpp.replay import harness

ROOT = Path(__file__).resolve().parents[3]
SIGNAL = ROOT / "markets" / "data" / "pjm-regd-test-signal-40min.csv"
AGENTS = 20  # two agent processes of ten: the second is killed and restarted
DB_PAUSE_S = 30.0
STEADY_S = 20.0  # regulation undisturbed between faults
RECOVERY_LIMIT_S = 90.0  # each fault must be recovered from within this, by itself

pytestmark = [
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="the drill restarts a redis-server of its own"),
]


def test_nothing_acknowledged_is_lost_or_doubled_through_faults_and_every_agent_regulates_again(tmp_path, capsys):
    if connection.vendor != "postgresql":
        pytest.skip("the drill pauses PostgreSQL through a TCP proxy (DATABASE_URL=postgres://...)")
    recoveries: dict[str, float] = {}  # fault -> seconds from its end until every agent reports and regulates
    timings: dict[str, float] = {}
    # Given 20 agents in two processes, connected, charging and regulating on an award
    with (
        RedisProcess() as redis,
        _pg_proxy() as proxy,
        Csms(tmp_path, proxy_port=proxy.port, redis=redis) as csms,
        regulating_agents(tmp_path, ws_base=csms.ws, prefix="drill", timings=timings, count=AGENTS) as drill,
    ):
        ids, groups = drill.ids, drill.groups
        # When poison frames arrive from another station (e)
        poison_id = harness.stations_provision(count=1, prefix="drillx", password=drill.password)[0]
        timings["poison frames answered"] = _poison(csms, poison_id, drill.password)
        # and the database pauses for 30 s (a)
        time.sleep(STEADY_S)
        proxy.pause()
        time.sleep(DB_PAUSE_S)
        recoveries["database paused 30 s"] = recovered(ids, fault_over=proxy.resume, within=RECOVERY_LIMIT_S)
        # and Redis restarts, losing everything it held (b)
        time.sleep(STEADY_S)
        redis.stop()
        time.sleep(5)
        recoveries["redis down 5 s"] = recovered(ids, fault_over=redis.start, within=RECOVERY_LIMIT_S)
        # and the server processes are killed and started again (c)
        time.sleep(STEADY_S)
        csms.kill()
        recoveries["server killed"] = recovered(ids, fault_over=csms.start, within=RECOVERY_LIMIT_S)
        # and one agent process is killed mid-flight and started again on its outbox (d)
        time.sleep(STEADY_S)
        groups[1].kill()
        recoveries["agents killed"] = recovered(ids, fault_over=groups[1].start, within=RECOVERY_LIMIT_S)

        # Then every agent is connected and regulating again (checked by recovered), and once the agents have
        # sent what they queued, their ledgers match what is stored, and nothing is stuck in an outbox: what is
        # left is what the last second produced, and no agent had a buffered message refused for good
        verdict, queued = drill.ledgers_checked(tmp_path)
    with capsys.disabled():
        print(f"\nfault drill, {AGENTS} agents: {verdict}; left in the outboxes at exit: {queued}")
        print("  " + ", ".join(f"{name} in {seconds:.1f} s" for name, seconds in timings.items()))
        print(f"  the utility's signal connection was dropped {drill.sender.reconnects} times: {drill.sender.drops}")
        for name, seconds in recoveries.items():
            print(f"  {name:<22} every agent reporting and regulating again {seconds:5.1f} s after")
    assert " 0 missing, 0 doubled" in verdict


# --- the drill's own pieces (the shared ones: tests/drill.py) -----------------------------------------------------


@contextlib.contextmanager
def _pg_proxy() -> Iterator[PausableTcpProxy]:
    db = settings.DATABASES["default"]
    with PausableTcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)) as proxy:
        yield proxy


class Csms:
    """``python -m vpp.serve --workers 2`` on a fixed port, the test database reached through the proxy.

    Two processes, so half the stations are commanded across Redis (the channel layer), as behind a load balancer.
    """

    def __init__(self, tmp_path: Path, *, proxy_port: int, redis: RedisProcess) -> None:
        db = settings.DATABASES["default"]
        self.port = free_port()
        self.ws = f"ws://127.0.0.1:{self.port}"
        self.log = tmp_path / "csms.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}@127.0.0.1:{proxy_port}/{db['NAME']}",
            "REDIS_URL": redis.url,
            "VPP_VAR_DIR": str(tmp_path / "csms-var"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vpp.serve", str(self.port), "--workers", "2"],
                cwd=ROOT,
                env=self.env,
                stderr=log,
                stdout=log,
                start_new_session=True,  # its own process group: kill() takes the workers down with it
            )
        wait_listening(self.process, self.port, within=30)

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> Csms:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


# Frames the group commit used to choke on: each must get its own answer while everyone else's batch commits.
POISON = [
    ("MeterValues", {"evseId": 1, "meterValue": [{"timestamp": "{now}", "sampledValue": [{"value": 1e308}]}]}),
    ("MeterValues", {"evseId": 2**63, "meterValue": [{"timestamp": "{now}", "sampledValue": [{"value": 1.0}]}]}),
    (
        "NotifyEvent",
        {
            "generatedAt": "{now}",
            "seqNo": 0,
            "eventData": [
                {
                    "eventId": 1,
                    "timestamp": "{now}",
                    "trigger": "Alerting",
                    "actualValue": "over\u0000heat",
                    "eventNotificationType": "CustomMonitor",
                    "component": {"name": "EVSE"},
                    "variable": {"name": "Problem"},
                }
            ],
        },
    ),
]


def _poison(csms: Csms, station_id: str, password: str) -> float:
    """Send the poison frames and a good one after them; returns the seconds until all were answered."""
    started = time.monotonic()
    offset = csms.log_size()
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with websockets.sync.client.connect(
        f"{csms.ws}/ocpp/{station_id}",
        subprotocols=[Subprotocol("ocpp2.1")],
        additional_headers={"Authorization": f"Basic {token}"},
    ) as ws:
        boot = {"reason": "PowerUp", "chargingStation": {"model": "drill", "vendorName": "drill"}}
        good = {"evseId": 1, "meterValue": [{"timestamp": now, "sampledValue": [{"value": 5}]}]}
        frames = [("BootNotification", boot), *POISON, ("MeterValues", good)]
        answers = []
        for n, (action, payload) in enumerate(frames):
            text = json.dumps([2, f"p-{n}", action, payload]).replace("{now}", now)
            ws.send(text)
            answers.append(json.loads(ws.recv(timeout=15)))
    codes = [a[2] if a[0] == 4 else "result" for a in answers]
    # Then the boot and the good frame after the poison are acknowledged, each poison frame gets its own precise
    # CALLERROR (or is stored made safe), never InternalError, and no batch had to be replayed job by job
    assert codes[0] == "result", codes
    assert codes[-1] == "result", codes
    assert "InternalError" not in codes, codes
    assert "retrying job by job" not in csms.log_since(offset)
    return time.monotonic() - started
