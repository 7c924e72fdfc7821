"""Regulation dispatch fan-out latency: signal received -> last station's CALLRESULT, for 100 and 1,000 stations.

A live CSMS (Daphne subprocess, this project's settings: SQLite + in-memory layer by default, or DATABASE_URL /
REDIS_URL), N simulated edge agents in another process (``edge-agent simulate``: real OCPP 2.1 over WebSockets,
meter values every second while regulating), a fleet and an award, then signal values sent every 2 s over the
utility WebSocket ``ws/regulation``. Each dispatch records, in the CSMS process, the time from the signal's arrival
to each station's CALLRESULT; the table gives the distribution of the LAST one per dispatch (target p99 <= 200 ms)
and of all per-station answers.

    python bench/dispatch_fanout.py [--stations 100 1000] [--signals 30] [--light] [--workers N | --nodes N]

``--light`` replaces the edge agents by minimal OCPP 2.1 stations (two processes, raw WebSockets: boot, then
answer every CSMS call at once, no meter values): it isolates the fan-out from the agents' and the telemetry's load.

``--nodes N`` (PostgreSQL and Redis) runs the multi-node deployment instead of one server (``manage.py runcluster``:
N Daphne nodes behind HAProxy, README "Operations: several nodes"): the stations connect through the balancer, so
they spread over the nodes, and each dispatch fans out on every node to the stations it holds (chargers/fanout.py).
The stations held per node are printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("VPP_VAR_DIR", tempfile.mkdtemp(prefix="vpp-bench-dispatch-"))

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from markets.regulation.signals import SignalTrace  # noqa: E402
from vpp.models import Dispatch, DispatchCommand  # noqa: E402
from vpp.replay import harness as replay  # noqa: E402

TARGET_MS = 200.0
TARGET_NODES_MS = 100.0  # with the stations spread over two or more nodes (issue 17)


LIGHT_STATIONS = r"""
import asyncio, base64, json, sys
import websockets.asyncio.client as client

async def station(url, sid, password, ready):
    while True:  # reconnect after a refused or dropped handshake (1,000 at once on a loaded machine)
        try:
            await session(url, sid, password, ready)
        except Exception:
            await asyncio.sleep(1.0)

async def session(url, sid, password, ready):
    auth = base64.b64encode(f"{sid}:{password}".encode()).decode()
    async with client.connect(f"{url}/{sid}", subprotocols=["ocpp2.1"],
                              additional_headers={"Authorization": f"Basic {auth}"}, open_timeout=60) as ws:
        await ws.send(json.dumps([2, "boot", "BootNotification",
                                  {"chargingStation": {"model": "light", "vendorName": "bench"}, "reason": "PowerUp"}]))
        async for frame in ws:
            # A CSMS CALL is answered Accepted without decoding it (the CSMS's frames are well formed and its
            # message ids plain): the stations' own CPU is not what is measured, and they share this machine.
            if frame.startswith("[2,"):
                message_id = frame[4:frame.index('"', 4)]
                await ws.send('[3,"' + message_id + '",{"status":"Accepted"}]')
            elif json.loads(frame)[1] == "boot":
                ready.append(sid)

async def main(url, prefix, first, last, password):
    ready = []
    tasks = []
    for i in range(first, last + 1):
        tasks.append(asyncio.ensure_future(station(url, f"{prefix}-{i}", password, ready)))
        if i % 50 == 0:
            await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
"""


LIGHT_PROCESSES = 2  # the light stations' processes (one event loop each)


@contextlib.contextmanager
def light_stations(*, count: int, ws_base: str, prefix: str, password: str):
    bounds = [round(count * k / LIGHT_PROCESSES) for k in range(LIGHT_PROCESSES + 1)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LIGHT_STATIONS, f"{ws_base}/ocpp", prefix, str(lo + 1), str(hi), password]
        )
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def light_fleet(station_ids: list[str]):
    """A vehicle plugged in at each light station (they report nothing, so the fleet is registered as given)."""
    from datetime import UTC, datetime

    from fleet.models import Fleet, Organisation, Vehicle
    from fleet.services.vehicles import session_open, soc_report

    org, _ = Organisation.objects.get_or_create(slug="bench", defaults={"name": "bench"})
    fleet = Fleet.objects.create(organisation=org, name=f"light {station_ids[0]}")
    now = datetime.now(UTC)
    for sid in station_ids:
        vehicle = Vehicle.objects.create(
            fleet=fleet, name=sid, model="bench", usable_capacity_wh=60_000, ac_max_charge_w=11_000,
            ac_max_discharge_w=11_000,
        )  # fmt: skip
        session_open(vehicle=vehicle, station_id=sid, evse_id=1, transaction_id="", matched_by="manual", started_at=now)
        soc_report(vehicle=vehicle, soc_wh=36_000, valid_at=now)
    return fleet


def csms_process() -> psutil.Process:
    """The live CSMS this bench started (``vpp.serve``, or ``runcluster`` with its nodes; workers are children)."""
    return next(p for p in psutil.Process().children() if {"vpp.serve", "runcluster"} & set(p.cmdline()))


def serving_cpu_s(server: psutil.Process) -> float:
    """CPU seconds of the server processes (``vpp.serve`` and its workers, or every node of a cluster): the Celery
    side and HAProxy of a cluster are left out, so the figure compares with one server's."""
    total = 0.0
    for process in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            if "vpp.serve" in process.cmdline():
                total += sum(process.cpu_times()[:2])
    return total


@contextlib.contextmanager
def csms(workers: int, nodes: int):
    """(ws base URL, http base URL) of one server (``workers`` processes on one socket) or of ``nodes`` nodes."""
    if not nodes:
        with replay.live_csms(None, workers=workers) as urls:
            yield urls
        return
    from tests.cluster import Cluster

    with Cluster(Path(tempfile.mkdtemp(prefix="vpp-bench-cluster-")), nodes=nodes) as cluster:
        yield cluster.ws, cluster.http


def holders(station_ids: list[str]) -> dict[str, str]:
    """station id -> the server process holding its socket (channels-redis: ``specific.<process>!<connection>``)."""
    from chargers.models import Station

    rows = Station.objects.filter(station_id__in=station_ids).exclude(channel_name="")
    return {sid: name.split("!")[0] for sid, name in rows.values_list("station_id", "channel_name")}


#: Stations held per server process during the last run, and each one's answers p50/p99 ms (filled by run()).
SPREAD: list[str] = []


def run(
    count: int, signals: int, light: bool, workers: int = 1, nodes: int = 0
) -> tuple[np.ndarray, np.ndarray, int, int, float]:
    product = replay.product_default()
    prefix = f"bf{count}x{os.getpid() % 1000}"
    password = replay.env_password()
    with csms(workers, nodes) as (ws_base, _http):
        ids = replay.stations_provision(count=count, prefix=prefix, password=password)
        token = replay.utility_token()
        stations = light_stations if light else replay.simulated_agents
        with stations(count=count, ws_base=ws_base, prefix=prefix, password=password):
            deadline = time.monotonic() + 60 + 0.2 * count
            if light:
                from chargers.models import Station

                while Station.objects.filter(station_id__in=ids, online=True).count() < count:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
                fleet = light_fleet(ids)
            else:
                while len(ready := replay.stations_ready(ids)) < count and time.monotonic() < deadline:
                    time.sleep(1.0)
                fleet = replay.fleet_register(ready, name=f"bench {prefix}")
            portfolio = f"fleet-{fleet.pk}"
            capacity = replay.capacity_offer_w(product=product, portfolio=portfolio)
            t0 = time.time() + 2.0
            from datetime import UTC, datetime, timedelta

            replay.award_create(
                product=product,
                portfolio=portfolio,
                capacity_w=capacity,
                start=datetime.now(UTC) - timedelta(minutes=1),
                end=datetime.now(UTC) + timedelta(hours=1),
            )
            offsets = np.arange(signals, dtype=np.int64) * 2
            trace = SignalTrace("bench", offsets, np.sin(offsets / 20.0) * 0.8)
            held = holders(ids)
            server = csms_process()
            cpu_before = serving_cpu_s(server)
            asyncio.run(
                replay.signal_follow(
                    ws_base=ws_base,
                    token=token,
                    product=f"{product.operator.code}:{product.code}",
                    portfolio=portfolio,
                    trace=trace,
                    t0=t0,
                    speed=1.0,
                    limit_s=float(offsets[-1]),
                )
            )
            time.sleep(2.0)
            cpu_s = serving_cpu_s(server) - cpu_before
    rows = Dispatch.objects.filter(portfolio=portfolio).exclude(last_ms=None)
    # The first dispatch of a process loads the state from the database (once): reported apart, not in the figures.
    last = np.array(list(rows.order_by("signal_at").values_list("last_ms", flat=True))[1:], dtype=float)
    per = np.array(
        list(
            DispatchCommand.objects.filter(dispatch__in=rows.order_by("signal_at")[1:])
            .exclude(latency_ms=None)
            .values_list("latency_ms", flat=True)
        ),
        dtype=float,
    )
    by_process: dict[str, list[float]] = {}
    measured = DispatchCommand.objects.filter(dispatch__in=rows.order_by("signal_at")[1:]).exclude(latency_ms=None)
    for sid, ms in measured.values_list("station_id", "latency_ms"):
        by_process.setdefault(held.get(sid, "?"), []).append(float(ms or 0.0))
    # Per server process: the stations it held and their answers' p50/p99 (ms). The dispatching process's own
    # stations get their calls with no hop; the others' go through one group message over Redis.
    SPREAD[:] = []
    for process, values in sorted(by_process.items(), key=lambda kv: -len(kv[1])):
        p50, p99 = np.percentile(values, [50, 99])
        SPREAD.append(f"{sum(1 for p in held.values() if p == process)}: {p50:.0f}/{p99:.0f}")
    accepted = DispatchCommand.objects.filter(dispatch__portfolio=portfolio, answer="Accepted").count()
    sent = DispatchCommand.objects.filter(dispatch__portfolio=portfolio).count()
    # Everything the server did for the signals (intake, allocation, the calls, their records) per command sent:
    # unlike the latency, this does not depend on what else the machine's cores are doing.
    return last, per, accepted, sent, cpu_s / max(sent, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--signals", type=int, default=30)
    parser.add_argument("--light", action="store_true", help="minimal stations instead of edge agents")
    parser.add_argument("--workers", type=int, default=1, help="Daphne worker processes (vpp.serve; needs REDIS_URL)")
    parser.add_argument(
        "--nodes", type=int, default=0, help="Daphne nodes behind HAProxy (runcluster; PostgreSQL+Redis)"
    )
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    print(
        f"database: {django.conf.settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
        f"channel layer: {'redis' if os.environ.get('REDIS_URL') else 'in-memory'}; "
        f"stations: {'light (answer at once)' if args.light else 'edge-agent simulate'}; "
        + (f"{args.nodes} Daphne nodes behind HAProxy" if args.nodes else f"{args.workers} Daphne process(es)")
        + f"; {os.cpu_count()} CPUs shared with the stations"
    )
    print(f"{'stations':>8} {'dispatches':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'answers p50/p99 ms':>20} {'accepted':>12} {'CPU us/cmd':>10} {'target p99':>11}")  # fmt: skip
    for count in args.stations:
        last, per, accepted, sent, cpu_us = run(count, args.signals, args.light, args.workers, args.nodes)
        if last.size == 0:
            print(f"{count:>8} no dispatch measured")
            continue
        p50, p90, p99 = (float(v) for v in np.percentile(last, [50, 90, 99]))
        worst = float(last.max())
        target = TARGET_NODES_MS if args.nodes else TARGET_MS
        verdict = "MET" if p99 <= target else "NOT MET"
        answers = f"{np.percentile(per, 50):.0f}/{np.percentile(per, 99):.0f}"
        # Edge agents also send meter values all along: the server's CPU is then not the commands' alone.
        cpu = f"{cpu_us:.0f}" if args.light else "n/a"
        print(f"{count:>8} {last.size:>10} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} {worst:>8.1f} {answers:>20} "
              f"{accepted:>5}/{sent:<6} {cpu:>10} {f'<= {target:.0f} ' + verdict:>11}")  # fmt: skip
        if len(SPREAD) > 1:
            print(f"{'':>8} per server process, stations held: answers p50/p99 ms: {'; '.join(SPREAD)}")


if __name__ == "__main__":
    main()
