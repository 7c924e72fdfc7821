"""Synchronized reserve response time against PJM's 10-minute requirement, end to end: a live CSMS (Daphne), N
simulated chargers with edge agents, the fleet holding a reserve award, and one event sent over the REST API.

    python bench/reserve_response.py [--vehicles 20] [--share 0.6] [--event-minutes 11] [--watch-s 120]

Prints (from the event's receipt by the server):
* setpoints sent: the run's first fan-out, receipt -> every station's SetChargingProfile answered (``Dispatch``);
* metered response: receipt -> the first instant the fleet's stored meter values show the assigned MW (and 95 %
  of it) below its power at the event start (``vpp.dispatch.selectors.fleet_power_at``, one-second steps).
The event asks ``--share`` of the fleet's room to discharge below what it draws at the start. Everything the bench
creates is deleted at the end (as ``regulation replay`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("VPP_VAR_DIR", tempfile.mkdtemp(prefix="vpp-bench-reserve-"))

import django  # noqa: E402

django.setup()

import secrets  # noqa: E402

from django.core.management import call_command  # noqa: E402

from fleet.numerics.arrays import power_bounds  # noqa: E402
from markets.models import Product  # noqa: E402
from markets.regulation.models import ReserveDeployment  # noqa: E402
from markets.reserve.models import ReserveEventPerformance  # noqa: E402
from vpp.dispatch.selectors import dispatch_state_load, fleet_power_at  # noqa: E402
from vpp.models import Dispatch  # noqa: E402
from vpp.replay import harness  # noqa: E402

PJM_RESPONSE_S = 600.0


def _ready(station_ids: list[str], timeout_s: float) -> list[harness.StationReady]:
    deadline = time.monotonic() + timeout_s
    while True:
        ready = harness.stations_ready(station_ids)
        if len(ready) == len(station_ids) or time.monotonic() > deadline:
            return ready
        time.sleep(1.0)


def _post(url: str, token: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Authorization": f"Api-Key {token}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--share", type=float, default=0.6)
    parser.add_argument("--event-minutes", type=float, default=11.0)
    parser.add_argument("--watch-s", type=float, default=120.0, help="how long to watch the meter values")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    product = Product.objects.select_related("operator").get(operator__code="pjm", code="sync-reserve")
    prefix, password = f"sr{secrets.token_hex(3)}", harness.env_password()
    made: dict[str, object] = {"station_ids": [], "portfolio": None, "fleet_id": None}
    try:
        with harness.live_csms(None) as (ws_base, http_base):
            station_ids = harness.stations_provision(count=args.vehicles, prefix=prefix, password=password)
            made["station_ids"] = station_ids
            token = harness.utility_token()
            with harness.simulated_agents(count=args.vehicles, ws_base=ws_base, prefix=prefix, password=password):
                ready = _ready(station_ids, 60.0 + 0.2 * args.vehicles)
                fleet = harness.fleet_register(ready, name=f"reserve bench {prefix}")
                portfolio = f"fleet-{fleet.pk}"
                made.update(fleet_id=fleet.pk, portfolio=portfolio)
                ids = [r.station_id for r in ready]
                time.sleep(3.0)  # a few meter values at the cars' own charging power
                now = time.time()
                state = dispatch_state_load(product_id=product.pk, portfolio=portfolio, now=now)
                lo = int(power_bounds(state.fleet, now=now, duration_s=args.event_minutes * 60).lo.sum())
                drawing = fleet_power_at(ids, now)
                assigned = max(int((drawing - lo) * args.share) // 1000 * 1000, 1000)
                start = datetime.now(UTC)
                harness.award_create(
                    product=product, portfolio=portfolio, capacity_w=assigned,
                    start=start - timedelta(minutes=5), end=start + timedelta(hours=1),
                )  # fmt: skip
                sent = time.time()
                answer = _post(
                    f"{http_base}/api/regulation/reserve",
                    token,
                    {"portfolio": portfolio, "event_id": f"bench-{prefix}",
                     "end": (start + timedelta(minutes=args.event_minutes)).isoformat()},
                )  # fmt: skip
                answered = time.time()
                time.sleep(args.watch_s)
                event = ReserveDeployment.objects.get(portfolio=portfolio, event_id=f"bench-{prefix}")
                _report(args, answer, event, ids, sent, answered, product)
    finally:
        if portfolio := str(made.get("portfolio") or ""):
            ReserveEventPerformance.objects.filter(deployment__portfolio=portfolio).delete()
            ReserveDeployment.objects.filter(portfolio=portfolio).delete()
        if made["station_ids"]:
            harness.replay_cleanup(**made)  # type: ignore[arg-type]


def _report(args, answer, event, ids, sent, answered, product) -> None:
    received = event.belief_time.timestamp()  # stored right after the server received it
    first = Dispatch.objects.filter(product=product, portfolio=event.portfolio).order_by("received_at").first()
    baseline = fleet_power_at(ids, event.start.timestamp())
    reached: dict[float, float | None] = {1.0: None, 0.95: None}
    for step in range(int(min(args.watch_s, PJM_RESPONSE_S))):
        at = event.start.timestamp() + step
        response = baseline - fleet_power_at(ids, at)
        for share in reached:
            if reached[share] is None and response >= share * event.power_w:
                reached[share] = at - received
    print(f"event: {event.power_w / 1000:.0f} kW on {len(ids)} cars drawing {baseline / 1000:.1f} kW at the start; "
          f"API answer in {(answered - sent) * 1000:.0f} ms, dispatched={answer.get('dispatched')}")  # fmt: skip
    print(f"{'figure':<44} {'value':>10} {'target':>10} {'verdict':>8}")
    if first is not None and first.last_ms is not None:
        ok = first.last_ms / 1000 <= PJM_RESPONSE_S
        print(f"{'received -> setpoints answered by all stations':<44} {first.last_ms:>8.0f} ms {'600 s':>10} "
              f"{'MET' if ok else 'NOT MET':>8}   ({first.accepted}/{first.commands} accepted)")  # fmt: skip
    else:
        print(f"{'received -> setpoints answered by all stations':<44} {'n/a':>10} {'600 s':>10} {'NOT MET':>8}")
    for share, seconds in reached.items():
        label = f"received -> metered response >= {share:.0%} of MW"
        value = f"{seconds:>8.1f} s" if seconds is not None else f"{'> watch':>10}"
        verdict = "MET" if seconds is not None and seconds <= PJM_RESPONSE_S else "NOT MET"
        print(f"{label:<44} {value:>10} {'600 s':>10} {verdict:>8}")


if __name__ == "__main__":
    main()
