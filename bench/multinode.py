"""Fault drills and load across nodes: the multi-node deployment (``manage.py runcluster``: Daphne nodes behind the real
HAProxy on deploy/haproxy-cluster.cfg, a Celery worker, one beat) on PostgreSQL and Redis, driven over real sockets.

    python bench/multinode.py kill  [--agents 500] [--per-process 250] [--tick 1.0]
    python bench/multinode.py storm [--stations 1000] [--runs 2]
    python bench/multinode.py soak  [--stations 1000] [--soak-minutes 10] [--rate 1]

``kill``: N edge agents (``edge-agent simulate --ledger``, several processes) regulate through the balancer, spread
over two nodes; node 2 is killed (SIGKILL) and left down. Reported: the time until every station is connected again
(all on the surviving node), until every one reports and accepts dispatch again, and the delivery ledger
(``station ledger-check``: acknowledged vs stored, missing, doubled).

``storm``: N raw OCPP stations (bench/csms_load.py's) connect through the balancer at the same instant and boot;
reported: the time until the last BootNotification is answered (target < 10 s), refused and retried connections,
and the spread over the nodes. ``--runs 2``: the second storm is a reconnect (the stations are known, were online).

``soak``: N raw stations send MeterValues at ``--rate``/s through the balancer for ``--soak-minutes``; every minute,
one row: values sent / answered / stored in that minute, CALL->CALLRESULT p50/p99/max of that minute, each node's RSS,
HAProxy's, the channel layer's queued messages and the Celery queue in Redis, stations still connected. At the end
every meter value is accounted for: stored rows = values answered (the CSMS acknowledged them) = values sent.

The dispatch fan-out across nodes is ``bench/dispatch_fanout.py --nodes 2`` (same deployment).
Needs DATABASE_URL=postgres://... and REDIS_URL=redis://... (its own database and Redis db: it provisions stations).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.csms_load import (  # noqa: E402
    LoadConfig,
    WorkerReport,
    _connect_and_boot,
    _drive,
    raise_fd_limit,
    run_load,
    station_ids,
)
from bench.csms_load import Station as LoadStation  # noqa: E402
from chargers.models import MeterValue, Station  # noqa: E402
from chargers.services.provisioning import stations_add  # noqa: E402
from tests.cluster import Cluster, cluster_unavailable  # noqa: E402
from tests.drill import Agents, SignalSender, award, regulating, wait  # noqa: E402
from vpp.replay import harness  # noqa: E402

STORM_TARGET_S = 10.0
PASSWORD = "bench-password-0123456789abcdef"


def say(text: str) -> None:
    print(text, flush=True)


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def holders(ids: list[str]) -> list[int]:
    """Stations held by each server process, most first (channels-redis: ``specific.<process>!<connection>``)."""
    names = Station.objects.filter(station_id__in=ids).exclude(channel_name="").values_list("channel_name", flat=True)
    return sorted(Counter(name.split("!")[0] for name in names).values(), reverse=True)


def var_dir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"vpp-bench-multinode-{name}-"))


# --- kill: a node killed under N regulating edge agents ---------------------------------------------------------


def kill(agents: int, per_process: int, tick: float) -> None:
    base = var_dir("kill")
    prefix = f"mk{os.getpid() % 10000}"
    password = harness.env_password()
    ids = harness.stations_provision(count=agents, prefix=prefix, password=password)
    with Cluster(base / "cluster") as cluster:
        groups = [
            Agents(base / f"agents-{n}", prefix=prefix, start=1 + first, ws_base=cluster.ws, password=password,
                   count=min(per_process, agents - first), tick=tick)
            for n, first in enumerate(range(0, agents, per_process))
        ]  # fmt: skip
        try:
            for group in groups:
                group.start()
            ready_s = wait(lambda: len(harness.stations_ready(ids)) == agents, 120 + 0.5 * agents, "agents ready")
            portfolio = award(harness.stations_ready(ids), name=f"node killed {prefix}")
            sender = SignalSender(cluster.ws, harness.utility_token(), portfolio)
            sender.start()
            begun = datetime.now(UTC)
            regulating_s = wait(lambda: regulating(ids, begun), within=180, what="regulating")
            spread = holders(ids)
            say(f"kill: {agents} agents ready in {ready_s:.1f} s, regulating in {regulating_s:.1f} s, spread {spread}")
            time.sleep(20)
            # When node 2 is killed and left down
            killed = datetime.now(UTC)
            cluster.kill_node(2)
            load_at_kill = load_average()
            reconnect_s = wait(lambda: holders(ids) == [agents], within=300, what="every station on the survivor")
            back_s = reconnect_s + wait(
                lambda: (
                    harness.stations_reported_since(station_ids=ids, since=killed) == agents and regulating(ids, killed)
                ),
                within=300,
                what="reporting and regulating again",
            )
            time.sleep(20)  # dispatch goes on on the survivor
            sender.stop()
            settled = datetime.now(UTC)
            wait(lambda: harness.stations_reported_since(station_ids=ids, since=settled) == agents, 120, "caught up")
        finally:
            for group in groups:
                group.stop()
    ledger = base / "ledger.jsonl"
    ledger.write_text("".join(group.ledger.read_text() for group in groups))
    out = io.StringIO()
    call_command("station", "ledger-check", str(ledger), stdout=out)
    queued = [group.queued_at_exit() for group in groups]
    say(f"kill: node 2 killed ({load_at_kill}); {spread[-1] if len(spread) > 1 else 0} stations had to move")
    say(f"  every station connected again (all on node 1) {reconnect_s:.1f} s after the kill")
    say(f"  every station reporting and accepting dispatch again {back_s:.1f} s after the kill")
    say(f"  ledger: {out.getvalue().strip()}; left in the outboxes at exit: {queued}")
    say(f"  the utility's signal connection dropped {sender.reconnects} times; values refused: {len(sender.refused)}")
    say(f"  {load_average()}")


# --- storm: N stations connecting at once through the balancer --------------------------------------------------


class SpreadWatch(threading.Thread):
    """Samples :func:`holders` while the stations are connected; keeps the sample holding the most stations."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.ids = ids
        self.widest: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self._stop_event.wait(0.5):
                sample = holders(self.ids)
                if sum(sample) > sum(self.widest):
                    self.widest = sample
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def storm(stations: int, runs: int) -> None:
    prefix = f"ms{os.getpid() % 10000}-"
    ids = station_ids(prefix, stations)
    stations_add(station_ids=ids, password=PASSWORD, update=True)
    with Cluster(var_dir("storm")) as cluster:
        assert cluster.process is not None
        for run in range(1, runs + 1):
            cfg = LoadConfig(
                url=f"{cluster.ws}/ocpp", stations=stations, mode="idle", duration=5.0, processes=2, prefix=prefix,
                password=PASSWORD, connect_concurrency=stations, connect_retries=2, connect_timeout=30.0,
                server_pid=cluster.process.pid,
            )  # fmt: skip
            before = load_average()
            spread = SpreadWatch(ids)
            spread.start()
            try:
                result = run_load(cfg, log=lambda _msg: None)
            finally:
                spread.stop()
            refused = {k: v for k, v in result.errors.items() if k.startswith("connect: ")}
            verdict = "MET" if result.booted == stations and result.reconnect_s < STORM_TARGET_S else "NOT MET"
            kind = "first connection" if run == 1 else "reconnect"
            say(
                f"storm {run} ({kind}): {result.booted}/{stations} booted in {result.reconnect_s:.2f} s "
                f"(p99 {result.connect_p99_s:.2f} s), refused {sum(refused.values())} {refused or ''}, "
                f"retried {result.errors.get('connect retries', 0)}, open at the end {result.open_at_end}, "
                f"spread {spread.widest}; target < {STORM_TARGET_S:.0f} s, none refused: {verdict}; "
                f"before: {before}, after: {load_average()}"
            )
            time.sleep(3)


# --- soak: N stations x rate MeterValues/s for M minutes, one row a minute ----------------------------------------


def _soak_worker(cfg: LoadConfig, ids: list[str], minutes: float, queue: Any) -> None:
    raise_fd_limit()
    asyncio.run(_soak_main(cfg, ids, minutes, queue))


async def _soak_main(cfg: LoadConfig, ids: list[str], minutes: float, queue: Any) -> None:
    report = WorkerReport()
    stations = [LoadStation(sid, report, cfg) for sid in ids]
    sem = asyncio.Semaphore(250)
    started = time.monotonic()
    booted = await asyncio.gather(*(_connect_and_boot(s, sem, started) for s in stations))
    live = [s for s, ok in zip(stations, booted, strict=True) if ok]
    queue.put(("booted", len(live), time.monotonic() - started))
    run_at = time.monotonic() + 1.0
    end_at = run_at + minutes * 60
    driving = asyncio.ensure_future(asyncio.gather(*(_drive(s, cfg, run_at, end_at) for s in live)))
    sent = answered = index = 0
    minute = 0
    while not driving.done():
        minute += 1
        await asyncio.sleep(max(0.0, run_at + minute * 60 - time.monotonic()))
        latencies = np.array(report.latencies[index:]) * 1000
        index = len(report.latencies)
        open_now = sum(1 for s in live if s.ws is not None and s.ws.state.name == "OPEN")
        queue.put(("minute", minute, report.sent - sent, report.answered - answered, latencies, open_now,
                   dict(report.errors)))  # fmt: skip
        sent, answered = report.sent, report.answered
        if time.monotonic() >= end_at:
            break
    await driving
    queue.put(("done", report.sent, report.answered, dict(report.errors)))
    await asyncio.gather(*(s.close() for s in stations))


def _redis_queues() -> tuple[int, int]:
    """(messages queued in the channel layer's channels, tasks waiting in Celery's queues) in REDIS_URL's db."""
    import redis

    client = redis.Redis.from_url(str(settings.REDIS_URL))
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    channel = celery = 0
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        raw_kind: Any = client.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
        if kind == "zset" and name.startswith(prefix) and ":group:" not in name:
            channel += int(client.zcard(key))
        elif kind == "list" and not name.startswith(prefix):
            celery += int(client.llen(key))
    return channel, celery


def _p50_p99_max(latencies_ms: Any) -> tuple[float, float, float]:
    if not latencies_ms.size:
        return 0.0, 0.0, 0.0
    p50, p99 = np.percentile(latencies_ms, [50, 99]).tolist()
    return p50, p99, float(latencies_ms.max())


def _rss_mb(process: psutil.Process | None) -> str:
    try:
        return f"{process.memory_info().rss / 1e6:.0f}" if process is not None else "-"
    except psutil.Error:
        return "-"


def soak(stations: int, minutes: float, rate: float) -> None:
    prefix = f"mo{os.getpid() % 10000}-"
    ids = station_ids(prefix, stations)
    stations_add(station_ids=ids, password=PASSWORD, update=True)
    cfg = LoadConfig(url="", stations=stations, mode="fixed", rate=rate, prefix=prefix, password=PASSWORD)
    with Cluster(var_dir("soak")) as cluster:
        assert cluster.process is not None
        cfg.url = f"{cluster.ws}/ocpp"
        haproxy = next(p for p in psutil.Process(cluster.process.pid).children() if "haproxy" in p.name())
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        workers = [ctx.Process(target=_soak_worker, args=(cfg, ids[k::2], minutes, queue), daemon=True)
                   for k in range(2)]  # fmt: skip
        stored_before = MeterValue.objects.filter(station__station_id__startswith=prefix).count()
        for worker in workers:
            worker.start()
        booted = [queue.get(timeout=300) for _ in workers]
        say(f"soak: {sum(b[1] for b in booted)}/{stations} booted in {max(b[2] for b in booted):.1f} s through the "
            f"balancer, spread {holders(ids)}; {rate:g} MeterValues/s each (3 values) for {minutes:g} min")  # fmt: skip
        say(
            f"{'min':>3} {'sent':>6} {'answered':>8} {'stored':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'node1 MB':>8} {'node2 MB':>8} {'haproxy MB':>10} {'layer q':>7} {'celery q':>8} {'open':>5}  load"
        )
        stored_at = stored_before
        totals = {"sent": 0, "answered": 0}
        finished = 0
        minute_rows: dict[int, list[tuple[Any, ...]]] = {}
        while finished < len(workers):
            message = queue.get(timeout=minutes * 60 + 600)
            if message[0] == "done":
                finished += 1
                totals["sent"] += message[1]
                totals["answered"] += message[2]
                continue
            minute_rows.setdefault(message[1], []).append(message)
            if len(minute_rows[message[1]]) < len(workers):
                continue
            rows = minute_rows.pop(message[1])
            latencies = np.concatenate([row[4] for row in rows]) if rows else np.array([])
            stored_now = MeterValue.objects.filter(station__station_id__startswith=prefix).count()
            layer_q, celery_q = _redis_queues()
            p50, p99, worst = _p50_p99_max(latencies)
            say(f"{message[1]:>3} {sum(r[2] for r in rows) * 3:>6} {sum(r[3] for r in rows) * 3:>8} "
                f"{stored_now - stored_at:>7} {p50:>7.1f} {p99:>7.1f} {worst:>7.1f} "
                f"{_rss_mb(cluster.node_process(1)):>8} {_rss_mb(cluster.node_process(2)):>8} {_rss_mb(haproxy):>10} "
                f"{layer_q:>7} {celery_q:>8} {sum(r[5] for r in rows):>5}  {load_average()}")  # fmt: skip
            stored_at = stored_now
        for worker in workers:
            worker.join(60)
        answered_values = totals["answered"] * 3
        deadline = time.monotonic() + 60
        while (stored := MeterValue.objects.filter(station__station_id__startswith=prefix).count() - stored_before) \
                < answered_values and time.monotonic() < deadline:  # fmt: skip
            time.sleep(1)
    ok = stored == answered_values == totals["sent"] * 3
    say(f"soak: values sent {totals['sent'] * 3}, acknowledged {answered_values}, stored {stored}: "
        f"{'every value accounted for' if ok else 'NOT every value accounted for'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kill", help="kill a node while N edge agents regulate")
    k.add_argument("--agents", type=int, default=500)
    k.add_argument("--per-process", type=int, default=250, help="agents per edge-agent process")
    k.add_argument("--tick", type=float, default=1.0, help="the agents' loop period, s")
    s = sub.add_parser("storm", help="N stations connecting at once through the balancer")
    s.add_argument("--stations", type=int, default=1000)
    s.add_argument("--runs", type=int, default=2)
    o = sub.add_parser("soak", help="N stations sending MeterValues for M minutes, a row a minute")
    o.add_argument("--stations", type=int, default=1000)
    o.add_argument("--soak-minutes", type=float, default=10.0)
    o.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    if why := cluster_unavailable():
        sys.exit(f"bench/multinode.py: {why}")
    raise_fd_limit()
    call_command("migrate", verbosity=0)
    say(f"{os.cpu_count()} CPUs shared by the nodes, HAProxy, Redis, PostgreSQL and the load; {load_average()}")
    if args.what == "kill":
        kill(args.agents, args.per_process, args.tick)
    elif args.what == "storm":
        storm(args.stations, args.runs)
    else:
        soak(args.stations, args.soak_minutes, args.rate)


if __name__ == "__main__":
    main()
