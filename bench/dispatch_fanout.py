"""Regulation dispatch fan-out latency: signal received -> last station's CALLRESULT, for 100 and 1,000 stations.

A live CSMS (Daphne subprocess, this project's settings: SQLite + in-memory layer by default, or DATABASE_URL /
REDIS_URL), N simulated edge agents in another process (``edge-agent simulate``: real OCPP 2.1 over WebSockets,
meter values every second while regulating), a fleet and an award, then signal values sent every 2 s over the
utility WebSocket ``ws/regulation``. Each dispatch records, in the CSMS process, the time from the signal's arrival
to each station's CALLRESULT; the table gives the distribution of the LAST one per dispatch (target p99 <= 200 ms)
and of all per-station answers.

    python bench/dispatch_fanout.py [--stations 100 1000] [--signals 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("VPP_VAR_DIR", tempfile.mkdtemp(prefix="vpp-bench-dispatch-"))

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from markets.signals import SignalTrace  # noqa: E402
from vpp import replay  # noqa: E402
from vpp.models import Dispatch, DispatchCommand  # noqa: E402

TARGET_MS = 200.0


def run(count: int, signals: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    product = replay.product_default()
    prefix = f"bf{count}x{os.getpid() % 1000}"
    password = replay.env_password()
    with replay.live_csms(None) as (ws_base, _http):
        ids = replay.stations_provision(count=count, prefix=prefix, password=password)
        token = replay.utility_token()
        with replay.simulated_agents(count=count, ws_base=ws_base, prefix=prefix, password=password):
            deadline = time.monotonic() + 60 + 0.2 * count
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
    accepted = DispatchCommand.objects.filter(dispatch__portfolio=portfolio, answer="Accepted").count()
    sent = DispatchCommand.objects.filter(dispatch__portfolio=portfolio).count()
    return last, per, accepted, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--signals", type=int, default=30)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    print(
        f"database: {django.conf.settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
        f"channel layer: {'redis' if os.environ.get('REDIS_URL') else 'in-memory'}; shared, loaded 2-core machine"
    )
    print(f"{'stations':>8} {'dispatches':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'answers p50/p99 ms':>20} {'accepted':>12} {'target p99':>11}")  # fmt: skip
    for count in args.stations:
        last, per, accepted, sent = run(count, args.signals)
        if last.size == 0:
            print(f"{count:>8} no dispatch measured")
            continue
        p50, p90, p99, worst = [*np.percentile(last, [50, 90, 99]).tolist(), float(last.max())]
        verdict = "MET" if p99 <= TARGET_MS else "NOT MET"
        answers = f"{np.percentile(per, 50):.0f}/{np.percentile(per, 99):.0f}"
        print(f"{count:>8} {last.size:>10} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} {worst:>8.1f} {answers:>20} "
              f"{accepted:>5}/{sent:<6} {'<= 200 ' + verdict:>11}")  # fmt: skip


if __name__ == "__main__":
    main()
