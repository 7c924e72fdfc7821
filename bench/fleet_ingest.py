"""Fleet telemetry ingest: how many readings a second one Celery worker process applies, and what the ingest window
(``FLEET_INGEST_WINDOW_S``) leaves it to do for N stations reporting every second.

Builds N plugged-in cars (a station, a transaction with the car's token, one session each), then times
``fleet.telemetry.telemetry_ingest`` -- the body of the ``fleet.ingest_telemetry`` task -- on batches shaped as the
CSMS hands them on: per 0.2-s committed batch (every reading, the old path) and per window (the newest reading of each
EVSE only, ``ReadingCoalescer``). Prints readings/s and the worker-seconds needed per second of the fleet's telemetry
(above 1.0, one worker process falls behind and the Celery queue grows).

Usage: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_ingest python bench/fleet_ingest.py --stations 500``.
Without DATABASE_URL it runs on a throw-away SQLite file. The database is migrated and flushed first: never point it
at a database you use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("VPP_VAR_DIR", tempfile.mkdtemp(prefix="vpp-bench-ingest-"))

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from chargers.models import Station  # noqa: E402
from chargers.models import Transaction as ChargerTransaction  # noqa: E402
from fleet.models import Fleet, Organisation, Vehicle  # noqa: E402
from fleet.services.vehicles import vehicle_state_refresh  # noqa: E402
from fleet.telemetry import Reading, ReadingCoalescer, telemetry_ingest  # noqa: E402
from vpp.celery import app  # noqa: E402

IMPORT = "Energy.Active.Import.Register"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def fleet_build(stations: int) -> None:
    organisation = Organisation.objects.create(slug="bench-ingest", name="Bench ingest")
    fleet = Fleet.objects.create(organisation=organisation, name="Bench ingest")
    for n in range(stations):
        station = Station.objects.create(station_id=f"ing-{n}")
        Vehicle.objects.create(
            fleet=fleet,
            name=f"car {n}",
            id_token=f"TOKEN-{n}",
            model="bench",
            usable_capacity_wh=60_000,
            ac_max_charge_w=11_000,
            ac_max_discharge_w=11_000,
            dc_max_charge_w=50_000,
            dc_max_discharge_w=11_000,
        )
        ChargerTransaction.objects.create(
            station=station, transaction_id=f"tx-{n}", evse_id=1, id_token=f"TOKEN-{n}", started_at=T0, active=True
        )


def second_of_readings(stations: int, second: int) -> list[Reading]:
    """Every station's MeterValues of one second: SoC and the import register (7.2 kW: 2 Wh a second)."""
    return [
        Reading(
            f"ing-{n}",
            "meter",
            T0 + timedelta(seconds=second),
            evse_id=1,
            values={"SoC": 50 + (2 * second) // 600, IMPORT: 2 * second},
            transaction_id=f"tx-{n}",
        )
        for n in range(stations)
    ]


def timed(batches: list[list[Reading]]) -> tuple[int, float]:
    started = time.perf_counter()
    for batch in batches:
        telemetry_ingest(readings=batch)
    return sum(len(b) for b in batches), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10, help="seconds of the fleet's telemetry per mode")
    parser.add_argument("--window", type=float, default=5.0, help="FLEET_INGEST_WINDOW_S to measure")
    args = parser.parse_args()
    # As with a broker: the vehicle-state refreshes the readings request are queued (in memory here), not run inline;
    # they are timed on their own below (the worker runs one per car per FLEET_TELEMETRY_REFRESH_S at most).
    app.conf.task_always_eager = False
    app.conf.broker_url = "memory://"
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    fleet_build(args.stations)
    # The first reading of each transaction opens its session: not part of the steady state measured.
    telemetry_ingest(readings=second_of_readings(args.stations, 0))

    # Per committed batch: every reading, in five batches a second (OCPP_TELEMETRY_INTERVAL 0.2 s).
    per_batch: list[list[Reading]] = []
    for s in range(1, args.seconds + 1):
        readings = second_of_readings(args.stations, s)
        fifth = max(1, len(readings) // 5)
        per_batch += [readings[i : i + fifth] for i in range(0, len(readings), fifth)]
    n_all, t_all = timed(per_batch)

    # Windowed: what ReadingCoalescer hands on for the same stream, one batch per window.
    windows: list[list[Reading]] = []
    coalescer = ReadingCoalescer(
        window_s=args.window, publish=lambda batch: windows.append([Reading.from_message(m) for m in batch])
    )
    start = args.seconds + 1
    for s in range(start, start + args.seconds):
        coalescer.add(r.as_message() for r in second_of_readings(args.stations, s))
        if (s - start + 1) % max(1, round(args.window)) == 0:
            coalescer.flush()
    coalescer.flush()
    n_win, t_win = timed(windows)

    started = time.perf_counter()
    for vehicle_id in Vehicle.objects.values_list("id", flat=True):
        vehicle_state_refresh(vehicle_id=vehicle_id)
    t_refresh = time.perf_counter() - started

    load = os.getloadavg()[0]
    print(f"fleet ingest, {args.stations} stations x 1 MeterValues/s, {args.seconds} s of telemetry per mode "
          f"(load average {load:.1f})")  # fmt: skip
    print(f"{'mode':<34} {'tasks':>6} {'readings':>9} {'readings/s':>11} {'worker-s per s':>15}")
    for name, tasks, n, t in (
        ("a task per 0.2-s batch (before)", len(per_batch), n_all, t_all),
        (f"window {args.window:g} s (FLEET_INGEST_WINDOW_S)", len(windows), n_win, t_win),
    ):
        print(f"{name:<34} {tasks:>6} {n:>9} {n / t:>11.0f} {t / args.seconds:>15.2f}")
    for period, name in ((2.0, "before: every 2 s"), (settings.FLEET_TELEMETRY_REFRESH_S, "FLEET_TELEMETRY_REFRESH_S")):
        print(f"{'vehicle-state refresh per car, ' + f'{period:g} s':<34} {args.stations:>6} {'':>9} {'':>11} "
              f"{t_refresh / period:>15.2f}  ({name})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
