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

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
import websockets.sync.client
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from websockets.typing import Subprotocol

from chargers.models import MeterValue
from markets.regulation.signals import read_signal_csv
from tests.faults import PausableTcpProxy, RedisProcess
from tests.live import free_port, wait_listening
from vpp.models import DispatchCommand
from vpp.replay import harness

ROOT = Path(__file__).resolve().parents[3]
SIGNAL = ROOT / "markets" / "data" / "pjm-regd-test-signal-40min.csv"
AGENTS, GROUP = 20, 10  # two agent processes of ten: the second is killed and restarted
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
    with RedisProcess() as redis, _pg_proxy() as proxy, Csms(tmp_path, proxy_port=proxy.port, redis=redis) as csms:
        # Given 20 agents in two processes, connected, charging and regulating on an award
        prefix = "drill"
        password = harness.env_password()
        ids = harness.stations_provision(count=AGENTS, prefix=prefix, password=password)
        poison_id = harness.stations_provision(count=1, prefix=f"{prefix}x", password=password)[0]
        groups = [
            Agents(tmp_path / f"agents-{n}", prefix=prefix, start=1 + n * GROUP, ws_base=csms.ws, password=password)
            for n in range(AGENTS // GROUP)
        ]
        with contextlib.ExitStack() as stack:
            for group in groups:
                stack.callback(group.stop)
                group.start()
            timings["agents ready"] = _wait(lambda: len(harness.stations_ready(ids)) == AGENTS, 120, "agents ready")
            portfolio = _award(harness.stations_ready(ids))
            sender = SignalSender(csms.ws, harness.utility_token(), portfolio)
            stack.callback(sender.stop)
            sender.start()
            begun = datetime.now(UTC)
            timings["all regulating"] = _wait(lambda: _regulating(ids, begun), within=60, what="regulating")

            # When poison frames arrive from another station (e)
            timings["poison frames answered"] = _poison(csms, poison_id, password)
            # and the database pauses for 30 s (a)
            time.sleep(STEADY_S)
            proxy.pause()
            time.sleep(DB_PAUSE_S)
            recoveries["database paused 30 s"] = _recovered(ids, fault_over=proxy.resume)
            # and Redis restarts, losing everything it held (b)
            time.sleep(STEADY_S)
            redis.stop()
            time.sleep(5)
            recoveries["redis down 5 s"] = _recovered(ids, fault_over=redis.start)
            # and the server processes are killed and started again (c)
            time.sleep(STEADY_S)
            csms.kill()
            recoveries["server killed"] = _recovered(ids, fault_over=csms.start)
            # and one agent process is killed mid-flight and started again on its outbox (d)
            time.sleep(STEADY_S)
            groups[1].kill()
            recoveries["agents killed"] = _recovered(ids, fault_over=groups[1].start)

            # Then every agent is connected and regulating again (checked by _recovered), and once the agents
            # have sent what they queued, their ledgers match what is stored
            sender.stop()
            settled = datetime.now(UTC)
            _wait(lambda: harness.stations_reported_since(station_ids=ids, since=settled) == AGENTS, 60, "caught up")
            for group in groups:
                group.stop()
        # And nothing is stuck in an outbox: what is left is what the last second produced, and no agent had a
        # buffered message refused for good
        queued = [group.queued_at_exit() for group in groups]
        assert all(q is not None and q <= 3 * GROUP for q in queued), queued
        assert not any(group.refused_for_good() for group in groups)
        ledger = tmp_path / "ledger.jsonl"
        ledger.write_text("".join(group.ledger.read_text() for group in groups))
        out = io.StringIO()
        call_command("station", "ledger-check", str(ledger), stdout=out)
        assert sender.refused == [], sender.refused[:3]
    with capsys.disabled():
        print(f"\nfault drill, {AGENTS} agents: {out.getvalue().strip()}; left in the outboxes at exit: {queued}")
        print("  " + ", ".join(f"{name} in {seconds:.1f} s" for name, seconds in timings.items()))
        print(f"  the utility's signal connection was dropped {sender.reconnects} times: {sender.drops}")
        for name, seconds in recoveries.items():
            print(f"  {name:<22} every agent reporting and regulating again {seconds:5.1f} s after")
    assert " 0 missing, 0 doubled" in out.getvalue()


# --- the drill's pieces -----------------------------------------------------------------------------------------


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


class Agents:
    """One ``edge-agent simulate`` process of ``GROUP`` agents, its outbox and ledger kept across restarts."""

    def __init__(self, var_dir: Path, *, prefix: str, start: int, ws_base: str, password: str) -> None:
        self.var_dir, self.prefix, self.first, self.ws_base, self.password = var_dir, prefix, start, ws_base, password
        self.ledger = var_dir / "ledger.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.var_dir.mkdir(exist_ok=True)
        exe = shutil.which("edge-agent", path=str(Path(sys.executable).parent)) or "edge-agent"
        argv = [
            exe, "simulate", "--count", str(GROUP), "--start-index", str(self.first), "--id-prefix", self.prefix,
            "--csms", f"{self.ws_base}/ocpp", "--ocpp", "2.1", "--tick", "0.25", "--var-dir", str(self.var_dir),
            "--ledger", str(self.ledger),
        ]  # fmt: skip
        with (self.var_dir / "agents.log").open("ab") as log:
            env = {**os.environ, "EDGE_AGENT_PASSWORD": self.password}
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)

    def queued_at_exit(self) -> int | None:
        """Messages still in the outboxes when the process last stopped (its exit line), None if it never said."""
        found = re.findall(r"(\d+) messages still queued", (self.var_dir / "agents.log").read_text(errors="replace"))
        return int(found[-1]) if found else None

    def refused_for_good(self) -> bool:
        return any("buffered_message_refused" in log.read_text(errors="replace") for log in self.var_dir.glob("*.log"))

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush; whatever was in flight is what the outbox and the CSMS must reconcile."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class SignalSender:
    """The utility's side: one RegD value every 2 s over ``ws/regulation``, reconnecting while the server is away."""

    def __init__(self, ws_base: str, token: str, portfolio: str) -> None:
        self.ws_base, self.token, self.portfolio = ws_base, token, portfolio
        self.values = read_signal_csv(str(SIGNAL)).values.tolist()
        self.refused: list[dict[str, Any]] = []
        self.reconnects = 0
        self.drops: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    async def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                async with websockets.asyncio.client.connect(
                    f"{self.ws_base}/ws/regulation",
                    additional_headers={"Authorization": f"Api-Key {self.token}"},
                    open_timeout=5,
                ) as ws:
                    reader = asyncio.ensure_future(self._read(ws))
                    while not self._stop.is_set():
                        value = self.values[index % len(self.values)]
                        at = datetime.now(UTC).isoformat()
                        await ws.send(json.dumps({"product": "pjm:reg-d", "portfolio": self.portfolio, "value": value,
                                                  "at": at}))  # fmt: skip
                        index += 1
                        await asyncio.sleep(2.0)
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.exceptions.WebSocketException):
                        await reader
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
                self.reconnects += 1
                self.drops.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)

    async def _read(self, ws: Any) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # the sender's next send reconnects
            async for frame in ws:
                answer = json.loads(frame)
                if not answer.get("ok", True):
                    self.refused.append(answer)


def _award(ready: list[harness.StationReady]) -> str:
    fleet = harness.fleet_register(ready, name="fault drill")
    portfolio = f"fleet-{fleet.pk}"
    product = harness.product_default()
    now = datetime.now(UTC)
    capacity = harness.capacity_offer_w(product=product, portfolio=portfolio)
    harness.award_create(
        product=product, portfolio=portfolio, capacity_w=capacity, start=now - timedelta(minutes=1),
        end=now + timedelta(hours=1),
    )  # fmt: skip
    return portfolio


def _regulating(ids: list[str], since: datetime) -> bool:
    """Every station accepted a dispatch command made after ``since``."""
    accepted = DispatchCommand.objects.filter(station_id__in=ids, dispatch__received_at__gte=since, answer="Accepted")
    return accepted.values("station_id").distinct().count() == len(ids)


def _recovered(ids: list[str], *, fault_over: Callable[[], Any]) -> float:
    """Ends the fault; returns the seconds until every station reports meter values and accepts dispatch
    commands again."""
    since = datetime.now(UTC)
    fault_over()

    def done() -> bool:
        reporting = MeterValue.objects.filter(station__station_id__in=ids, received_at__gte=since)
        return reporting.values("station_id").distinct().count() == len(ids) and _regulating(ids, since)

    return _wait(done, within=RECOVERY_LIMIT_S, what="recovery")


def _wait(predicate: Callable[[], bool], within: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start


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
