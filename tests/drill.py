"""The fault drills' pieces, shared by the single-node drill (tests/vpp/replay/test_fault_drill.py) and the one across
nodes (tests/vpp/test_cluster.py): edge agents in a process of their own with outbox and ledger, the utility's signal
sender, the award that makes them regulate, the waits that say when every station is back, and the drills' common
start (:func:`regulating_agents`) and end (:meth:`Drill.ledgers_checked`).
"""

from __future__ import annotations

import asyncio
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import websockets.asyncio.client
from django.core.management import call_command

from chargers.models import MeterValue
from markets.regulation.signals import read_signal_csv
from vpp.models import DispatchCommand
from vpp.replay import harness

ROOT = Path(__file__).resolve().parents[1]
SIGNAL = ROOT / "markets" / "data" / "pjm-regd-test-signal-40min.csv"


class Agents:
    """One ``edge-agent simulate`` process of ``count`` agents, its outbox and ledger kept across restarts."""

    def __init__(
        self,
        var_dir: Path,
        *,
        prefix: str,
        start: int,
        ws_base: str,
        password: str,
        count: int = 10,
        tick: float = 0.25,
    ) -> None:
        self.var_dir, self.prefix, self.first, self.ws_base, self.password = var_dir, prefix, start, ws_base, password
        self.count, self.tick = count, tick
        self.ledger = var_dir / "ledger.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.var_dir.mkdir(exist_ok=True)
        exe = shutil.which("edge-agent", path=str(Path(sys.executable).parent)) or "edge-agent"
        argv = [
            exe, "simulate", "--count", str(self.count), "--start-index", str(self.first), "--id-prefix", self.prefix,
            "--csms", f"{self.ws_base}/ocpp", "--ocpp", "2.1", "--tick", str(self.tick), "--var-dir", str(self.var_dir),
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


def award(ready: list[harness.StationReady], *, name: str = "fault drill") -> str:
    fleet = harness.fleet_register(ready, name=name)
    portfolio = f"fleet-{fleet.pk}"
    product = harness.product_default()
    now = datetime.now(UTC)
    capacity = harness.capacity_offer_w(product=product, portfolio=portfolio)
    harness.award_create(
        product=product, portfolio=portfolio, capacity_w=capacity, start=now - timedelta(minutes=1),
        end=now + timedelta(hours=1),
    )  # fmt: skip
    return portfolio


def regulating(ids: list[str], since: datetime) -> bool:
    """Every station accepted a dispatch command made after ``since``."""
    accepted = DispatchCommand.objects.filter(station_id__in=ids, dispatch__received_at__gte=since, answer="Accepted")
    return accepted.values("station_id").distinct().count() == len(ids)


def recovered(ids: list[str], *, fault_over: Callable[[], Any], within: float = 90.0) -> float:
    """Ends the fault; returns the seconds until every station reports meter values and accepts dispatch
    commands again."""
    since = datetime.now(UTC)
    fault_over()

    def done() -> bool:
        reporting = MeterValue.objects.filter(station__station_id__in=ids, received_at__gte=since)
        return reporting.values("station_id").distinct().count() == len(ids) and regulating(ids, since)

    return wait(done, within=within, what="recovery")


def wait(predicate: Callable[[], bool], within: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start


@dataclass
class Drill:
    """A drill's agents, regulating: their station ids, agent processes and the utility's signal sender."""

    ids: list[str]
    groups: list[Agents]
    sender: SignalSender
    password: str

    def ledgers_checked(self, tmp_path: Path) -> tuple[str, list[int | None]]:
        """Stops the signal, waits until every agent has sent what it queued, stops the agents and checks that nothing
        is stuck in an outbox (what is left is what the last second produced), no buffered message was refused for
        good and the signal was never refused; returns ``station ledger-check``'s verdict on the agents' ledgers
        against what is stored, and what each agent process left queued at exit."""
        self.sender.stop()
        settled = datetime.now(UTC)
        count = len(self.ids)
        wait(lambda: harness.stations_reported_since(station_ids=self.ids, since=settled) == count, 60, "caught up")
        for group in self.groups:
            group.stop()
        queued = [group.queued_at_exit() for group in self.groups]
        assert all(q is not None and q <= 3 * group.count for q, group in zip(queued, self.groups, strict=True)), queued
        assert not any(group.refused_for_good() for group in self.groups)
        ledger = tmp_path / "ledger.jsonl"
        ledger.write_text("".join(group.ledger.read_text() for group in self.groups))
        out = io.StringIO()
        call_command("station", "ledger-check", str(ledger), stdout=out)
        assert self.sender.refused == [], self.sender.refused[:3]
        return out.getvalue().strip(), queued


@contextlib.contextmanager
def regulating_agents(
    tmp_path: Path, *, ws_base: str, prefix: str, timings: dict[str, float], count: int = 20, group: int = 10
) -> Iterator[Drill]:
    """``count`` agents in processes of ``group``, connected to ``ws_base``, charging and regulating on an award with
    the utility's signal flowing (``timings``: how long until they were ready, then regulating); the sender and
    every agent process are stopped on the way out."""
    password = harness.env_password()
    ids = harness.stations_provision(count=count, prefix=prefix, password=password)
    groups = [
        Agents(tmp_path / f"agents-{n}", prefix=prefix, start=1 + n * group, ws_base=ws_base, password=password,
               count=group)
        for n in range(count // group)
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for agents in groups:
            stack.callback(agents.stop)
            agents.start()
        timings["agents ready"] = wait(lambda: len(harness.stations_ready(ids)) == count, 120, "agents ready")
        portfolio = award(harness.stations_ready(ids))
        sender = SignalSender(ws_base, harness.utility_token(), portfolio)
        stack.callback(sender.stop)
        sender.start()
        begun = datetime.now(UTC)
        timings["all regulating"] = wait(lambda: regulating(ids, begun), within=60, what="regulating")
        yield Drill(ids=ids, groups=groups, sender=sender, password=password)
