"""``python manage.py regulation replay --signal FILE.csv --vehicles N --out RESULT.csv [--csms URL] [--speed X]
[--duration S] [--capacity-kw KW]``: the regulation path end to end (see :mod:`vpp.replay.harness`)."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser

from markets.regulation.signals import SignalFileError, read_signal_csv
from vpp.progress import progress_bar
from vpp.replay import harness, results
from vpp.replay.harness import StationReady


class Command(BaseCommand):
    help = "Regulation tools. replay: follow a signal file with simulated agents through the real dispatch path."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        rp = sub.add_parser("replay", help="replay a regulation signal file end to end")
        rp.add_argument("--signal", required=True, help="signal CSV in the layout of the PJM RegD test file")
        rp.add_argument("--vehicles", type=int, required=True, help="number of simulated vehicles / stations")
        rp.add_argument("--out", required=True, help="result CSV, one row per signal value")
        rp.add_argument("--csms", default=None, help="use this running CSMS (http(s):// or ws(s):// base URL)")
        rp.add_argument("--speed", type=float, default=1.0, help="time compression (1.0 = real time)")
        rp.add_argument("--duration", type=float, default=None, help="replay only the first S seconds of signal")
        rp.add_argument("--capacity-kw", type=float, default=None, help="award this much (default: from the fleet)")
        rp.add_argument("--ready-timeout", type=float, default=None, help="seconds to wait for the agents")
        rp.add_argument(
            "--drain-timeout", type=float, default=180.0, help="seconds to wait for the last meter values (default 180)"
        )
        rp.add_argument(
            "--keep",
            action="store_true",
            help="keep the replay's stations, fleet, bids, award and signal in the database (default: deleted at the "
            "end, so they do not show in the product's pages)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "replay":
            self.replay(**options)

    def replay(self, **o: Any) -> None:
        count, speed = int(o["vehicles"]), float(o["speed"])
        if count < 1 or not speed > 0:
            raise CommandError("--vehicles must be >= 1 and --speed > 0")
        try:
            trace = read_signal_csv(o["signal"])
        except (OSError, SignalFileError) as exc:
            raise CommandError(f"cannot read the signal file: {exc}") from exc
        limit_s = float(o["duration"]) if o["duration"] else float(trace.duration_s)
        product = harness.product_default()
        product_code = f"{product.operator.code}:{product.code}"
        prefix = f"rp{secrets.token_hex(3)}"
        password = harness.env_password()
        made: dict[str, Any] = {"station_ids": [], "portfolio": None, "fleet_id": None}
        try:
            self._replay(o, trace, limit_s, count, speed, product, product_code, prefix, password, made)
        finally:
            if not o["keep"] and made["station_ids"]:
                gone = harness.replay_cleanup(**made)
                self.stdout.write(f"replay data removed from the database ({gone}); --keep keeps it")

    def _replay(
        self,
        o: dict[str, Any],
        trace: Any,
        limit_s: float,
        count: int,
        speed: float,
        product: Any,
        product_code: str,
        prefix: str,
        password: str,
        made: dict[str, Any],
    ) -> None:
        with harness.live_csms(o["csms"]) as (ws_base, http_base):
            self.stdout.write(f"CSMS at {http_base}; {count} stations {prefix}-1..{prefix}-{count}")
            station_ids = harness.stations_provision(count=count, prefix=prefix, password=password)
            made["station_ids"] = station_ids
            token = harness.utility_token()
            agents_log = Path(o["out"]).with_suffix(".agents.log")
            with harness.simulated_agents(
                count=count, ws_base=ws_base, prefix=prefix, password=password, log_to=agents_log
            ):
                ready = self._wait_ready(station_ids, o["ready_timeout"] or 60.0 + 0.2 * count)
                fleet = harness.fleet_register(ready, name=f"replay {prefix}")
                portfolio = f"fleet-{fleet.pk}"
                made.update(fleet_id=fleet.pk, portfolio=portfolio)
                capacity = (
                    int(o["capacity_kw"] * 1000)
                    if o["capacity_kw"]
                    else harness.capacity_offer_w(product=product, portfolio=portfolio)
                )
                t0 = time.time() + 2.0
                start = datetime.fromtimestamp(t0, UTC) - timedelta(seconds=60)
                end = datetime.fromtimestamp(t0 + limit_s / speed, UTC) + timedelta(minutes=10)
                harness.award_create(product=product, portfolio=portfolio, capacity_w=capacity, start=start, end=end)
                self.stdout.write(
                    f"{len(ready)} vehicles ready; awarded {capacity / 1000:.0f} kW of {product_code} to {portfolio}; "
                    f"following {trace.name} for {limit_s:.0f} s of signal at speed {speed:g}"
                )
                with progress_bar("following the signal", limit_s) as update:
                    answers = asyncio.run(
                        harness.signal_follow(
                            ws_base=ws_base,
                            token=token,
                            product=product_code,
                            portfolio=portfolio,
                            trace=trace,
                            t0=t0,
                            speed=speed,
                            limit_s=limit_s,
                            progress=update,
                        )
                    )
                offsets = trace.offsets_s - trace.offsets_s[0]
                keep = offsets <= limit_s
                times = t0 + offsets[keep] / speed
                # The agents may still be sending queued meter values: score once they cover the last signal value.
                ids = [r.station_id for r in ready]
                last = datetime.fromtimestamp(float(times[-1]) + 2.0 / speed, UTC)
                caught_up = harness.meter_values_await(station_ids=ids, since=last, timeout_s=o["drain_timeout"])
                if caught_up < len(ids):
                    self.stdout.write(f"{len(ids) - caught_up} stations' meter values did not reach the end in time")
        refused = [a for a in answers if not a.get("ok")]
        if refused:
            raise CommandError(f"the intake refused {len(refused)} values, e.g. {refused[0].get('error')}")
        # The response is read in the middle of each value's interval: where a 10-s sampler that is not
        # synchronised with the signal's updates (PJM's) lands on average. At the update instant itself the answer
        # to the value just sent cannot have been metered yet: that worst case is scored and printed too.
        interval_s = float(np.median(np.diff(offsets[keep]))) / speed if keep.sum() > 1 else 2.0 / speed
        rows, at_updates = (
            results.replay_rows(
                product=product,
                portfolio=portfolio,
                station_ids=[r.station_id for r in ready],
                times_s=times.astype(float),
                signal=trace.values[keep],
                sample_at_s=phase,
            )
            for phase in (interval_s / 2.0, 0.0)
        )
        written = results.rows_write(o["out"], rows)
        kept = f"; the agents' session log: {agents_log}" if agents_log.exists() else ""
        self.stdout.write(f"{written} rows written to {o['out']}{kept}")
        low = np.nanmin(rows.min_soc_pct) if not np.all(np.isnan(rows.min_soc_pct)) else math.nan
        self.stdout.write(
            f"lowest SoC in the fleet: {low:.0f} % (floor {20} %); meter values used: {rows.meter_values}, "
            f"retransmissions ignored: {rows.duplicates}"
        )
        amplitude, rms = results.tracking(rows)
        self.stdout.write(
            f"tracking: the fleet delivered {amplitude * 100:.1f} % of the requested regulation (least-squares "
            f"amplitude), rms error {rms / 1000:.2f} kW; response read mid-interval"
        )
        try:
            score, worst = (results.replay_score(r, speed=speed) for r in (rows, at_updates))
        except (harness.ReplayError, ValueError) as exc:
            self.stdout.write(f"performance score: not computed ({exc})")
            return
        label = "hourly performance score" if speed == 1.0 else f"performance score (signal time, speed {speed:g})"
        self.stdout.write(
            f"{label}: composite {score.composite:.3f} = mean(accuracy {score.accuracy:.3f}, "
            f"delay {score.delay:.3f}, precision {score.precision:.3f}); "
            f"{'PASS' if score.passed else 'FAIL'} (pass mark 0.75); response read mid-interval"
        )
        self.stdout.write(
            f"worst case, response read at each update instant: composite {worst.composite:.3f} = mean(accuracy "
            f"{worst.accuracy:.3f}, delay {worst.delay:.3f}, precision {worst.precision:.3f})"
        )

    def _wait_ready(self, station_ids: list[str], timeout: float) -> list[StationReady]:
        deadline = time.monotonic() + timeout
        while True:
            ready = harness.stations_ready(station_ids)
            if len(ready) == len(station_ids):
                return ready
            if time.monotonic() > deadline:
                if not ready:
                    raise CommandError(f"no agent was ready within {timeout:.0f} s")
                self.stderr.write(f"only {len(ready)} of {len(station_ids)} agents ready; going on with those")
                return ready
            time.sleep(1.0)
