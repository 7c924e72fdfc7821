"""Edge agent: how many simulated agents one process sustains at 1 message/s each (target >= 1,000).

The fleet (``edge_agent.simulate.Fleet``: one event loop, one shared 0.5 s tick timer, group-committed SQLite
outbox) runs in this process; a bare recording CSMS (the ``ocpp`` library + ``websockets``, schema validation off
so its cost does not count against the agents) runs in a separate process. Every agent is in a transaction and
sends a TransactionEvent with meter values every second. "Sustained" means the CSMS answered >= 95 % of the
offered 1 msg/s per agent over the measuring window and the agents' outbox backlog did not grow.

    python bench/edge_agents_scale.py [--counts 250,500,1000] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _edge_util import table

from edge_agent.simulate import Fleet

PASSWORD = "bench-scale"
ROOT = Path(__file__).resolve().parents[1]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class CsmsProcess:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.latest: dict = {}
        self.port = 0
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.edge_agent.csms", "--password", PASSWORD, "--no-validate",
            "--report-every", "0.5", cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = json.loads(await self.proc.stdout.readline())
        self.port = first["port"]
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.latest = json.loads(line)

    def tx_events(self) -> int:
        return int(self.latest.get("counts", {}).get("TransactionEvent", 0))

    def cpu_s(self) -> float:
        import psutil

        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            self._reader.cancel()


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(count: int, csms: CsmsProcess, window_s: float, tick_s: float) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="edge-scale-")
    fleet = Fleet(count, f"ws://127.0.0.1:{csms.port}/ocpp", f"scale{count}", PASSWORD, tick_s=tick_s,
                  meter_interval_s=1.0, idle_meter_interval_s=1.0, var_dir=tmp.name, connect_rate_per_s=400,
                  reconnect_min_s=2.0)  # fmt: skip
    run = asyncio.ensure_future(fleet.run())
    t_start = time.monotonic()
    while sum(st.link.connected for st in fleet.stations) < count and time.monotonic() - t_start < 120:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    connect_s = time.monotonic() - t_start
    # Steady state: what queued while the fleet was still connecting (real agents buffer offline) drains first.
    t_drain = time.monotonic()
    while sum(len(st.outbox) for st in fleet.stations) > count and time.monotonic() - t_drain < 90:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    drain_s = time.monotonic() - t_drain
    await asyncio.sleep(2.0)
    backlog0 = sum(len(st.outbox) for st in fleet.stations)
    ev0, cpu0, ccpu0, t0 = csms.tx_events(), cpu_self(), csms.cpu_s(), time.monotonic()
    lag_max = 0.0
    loop = asyncio.get_running_loop()
    end = t0 + window_s
    while time.monotonic() < end:  # event-loop responsiveness while the fleet runs
        t = loop.time()
        await asyncio.sleep(0.1)
        lag_max = max(lag_max, loop.time() - t - 0.1)
    await asyncio.sleep(0.6)  # the CSMS reports every 0.5 s
    elapsed = time.monotonic() - t0
    ev1, cpu1, ccpu1 = csms.tx_events(), cpu_self(), csms.cpu_s()
    backlog1 = sum(len(st.outbox) for st in fleet.stations)
    connected = sum(st.link.connected for st in fleet.stations)
    fleet.stop()
    report = await run
    tmp.cleanup()
    rate = (ev1 - ev0) / (elapsed - 0.6)
    return {
        "count": count,
        "connected": connected,
        "connect_s": connect_s,
        "drain_s": drain_s,
        "rate": rate,
        "per_agent": rate / count,
        "agent_cpu": (cpu1 - cpu0) / elapsed,
        "csms_cpu": (ccpu1 - ccpu0) / elapsed,
        "backlog0": backlog0,
        "backlog1": backlog1,
        "lag_max": lag_max,
        "ticks": report.ticks,
    }


async def run(counts: list[int], window_s: float, tick_s: float) -> list[dict]:
    csms = CsmsProcess()
    await csms.start()
    results = []
    try:
        for n in counts:
            results.append(await measure(n, csms, window_s, tick_s))
            await asyncio.sleep(2.0)
    finally:
        await csms.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="250,500,1000")
    parser.add_argument("--window", type=float, default=20.0, help="measuring window per count, s")
    parser.add_argument("--tick", type=float, default=1.0, help="the simulated chargers' loop period, s")
    args = parser.parse_args()
    logging.getLogger("edge_agent").setLevel(logging.CRITICAL)
    fds = raise_fd_limit()
    counts = [int(c) for c in args.counts.split(",")]
    if fds < max(counts) + 100:
        print(f"warning: open-files limit {fds} is below the agent count", file=sys.stderr)
    results = asyncio.run(run(counts, args.window, args.tick))
    rows: list[tuple[str, str, str, bool | None]] = []
    best = 0
    for r in results:
        sustained = (
            r["per_agent"] >= 0.95 and r["connected"] == r["count"] and r["backlog1"] <= r["backlog0"] + r["count"]
        )
        if sustained:
            best = max(best, r["count"])
        n = r["count"]
        rows += [
            (f"{n} agents: connected", f"{r['connected']} in {r['connect_s']:.1f} s", f"{n}", r["connected"] == n),
            (f"{n} agents: msgs answered/s", f"{r['rate']:.0f} ({r['per_agent']:.2f}/agent)", ">= 0.95/agent",
             r["per_agent"] >= 0.95),
            (f"{n} agents: outbox backlog", f"{r['backlog0']} -> {r['backlog1']}", "not growing",
             r["backlog1"] <= r["backlog0"] + n),
            (f"{n} agents: start-up backlog drained", f"in {r['drain_s']:.0f} s", "", None),
            (f"{n} agents: agent process CPU", f"{r['agent_cpu'] * 100:.0f} %", "< 100 % (1 core)", r["agent_cpu"] < 1),
            (f"{n} agents: agent CPU per message", f"{r['agent_cpu'] / max(r['rate'], 1) * 1e3:.2f} ms",
             "(incl. ticks)", None),
            (f"{n} agents: projected per core", f"{1.0 / max(r['agent_cpu'], 1e-9) * r['rate']:.0f} agents",
             ">= 1,000 at 1 msg/s", 1.0 / max(r["agent_cpu"], 1e-9) * r["rate"] >= 1000),
            (f"{n} agents: CSMS process CPU", f"{r['csms_cpu'] * 100:.0f} %", "(separate process)", None),
            (f"{n} agents: event-loop lag max", f"{r['lag_max'] * 1000:.0f} ms", "< 500 ms", r["lag_max"] < 0.5),
        ]  # fmt: skip
    rows.append(("agents sustained in one process", f"{best}", ">= 1,000 at 1 msg/s", best >= 1000))
    table(f"Edge agent fleet scale: one process, {args.tick:g} s shared tick, 1 TransactionEvent/s per agent", rows)


if __name__ == "__main__":
    main()
