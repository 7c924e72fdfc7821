"""Regulation scoring and settlement speed: the pure hourly score, and an hour of N vehicles from the database.

1. Pure: ``markets.regulation.scoring.performance_score`` on one hourly template (391 rows), repeated; median and p99.
2. Database: N stations (default 100) follow the PJM RegD test signal (the 40-minute file, looped over the hour)
   with a 3-s first-order lag, meter noise 0.2 % + 5 W (the edge simulator's), reporting power and energy
   registers (kept by an ideal meter) every ``--interval`` s (the edge agent reports every 1-2 s while
   regulating); 2 % of the readings are stored twice, as retransmissions.
   Then timed: ``performance_score_compute`` (read + deduplicate + align + score), ``settlement_compute`` (again
   reading the meter values, energy per price interval, vehicle lines) and ``reconciliation_report``. The score
   and the reconciliation's worst disagreement are printed too.

Targets: the issue sets none for settlement. Our own bounds: hourly score < 50 ms pure; scoring + settling one
hour of 100 vehicles < 60 s (the settle task runs every 5 min on a shared 2-core machine).

Usage: ``python bench/regulation_settlement.py [--vehicles 100] [--interval 2] [--repeat 50] [--noise-pct 0.2]``.
Runs in a fresh test database (SQLite under a temp dir, or ``test_<name>`` of DATABASE_URL), destroyed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Django is set up below, before the models can be imported for real
    from markets.models import Award

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._progress import track  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("VPP_VAR_DIR", tempfile.mkdtemp(prefix="vpp-bench-settle-"))

REGD = ROOT / "markets" / "data" / "pjm-regd-test-signal-40min.csv"
HOUR = datetime(2025, 7, 1, 14, 0, tzinfo=UTC)
SPAN_S = 3902


def bench_pure(repeat: int) -> list[tuple[str, str, str, str]]:
    from markets.regulation.scoring import HOURLY_ROWS, performance_score

    rng = np.random.default_rng(3)
    reg = np.cumsum(rng.normal(0, 0.1, HOURLY_ROWS))
    resp = np.roll(reg, 1) + rng.normal(0, 0.02, HOURLY_ROWS)
    times = []
    for _ in track(range(repeat), "pure score"):
        t0 = time.perf_counter()
        performance_score(reg, resp)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return [("hourly score, pure (391 rows)", f"{statistics.median(times):.1f} ms", f"p99 {p99:.1f} ms", "< 50 ms")]


def _signal() -> np.ndarray:
    from markets.regulation.signals import read_signal_csv

    values = read_signal_csv(REGD).values[:-1]  # 1200 values, 2 s apart, 40 min
    return np.tile(values, SPAN_S // (2 * values.size) + 2)[: SPAN_S // 2 + 1]


def seed(vehicles: int, interval: int, noise_pct: float = 0.2) -> tuple[Award, int]:
    from chargers.models import MeterValue, Station
    from markets.models import Award, Bid, Product
    from markets.regulation.models import RegulationSignal
    from markets.regulation.services import energy_price_record, regulation_price_record

    product = Product.objects.get(operator__code="pjm", code="reg-d")
    capacity_w = vehicles * 10_000  # 10 kW of regulation per vehicle
    bid = Bid.objects.create(
        product=product,
        interval_start=HOUR,
        interval_end=HOUR + timedelta(hours=1),
        quantity_w=capacity_w,
        price=Decimal("30"),
        status="awarded",
        external_ref="bench",
    )
    award = Award.objects.create(
        bid=bid,
        product=product,
        interval_start=HOUR,
        interval_end=HOUR + timedelta(hours=1),
        awarded_w=capacity_w,
        clearing_price=Decimal("30.00"),
        source="simulated",
        received_at=HOUR,
    )
    regulation_price_record(
        product=product, interval_start=HOUR, performance_price=Decimal("3.10"), mileage_ratio=Decimal("3.2")
    )
    for k in range(12):
        energy_price_record(
            operator_id=product.operator_id,
            interval_start=HOUR + timedelta(minutes=5 * k),
            interval_minutes=5,
            price=Decimal("25") + k,
        )
    signal = _signal()
    now = datetime.now(UTC)
    RegulationSignal.objects.bulk_create(
        RegulationSignal(
            product=product,
            at=HOUR + timedelta(seconds=2 * i),
            value=Decimal(f"{v:.5f}"),
            source="file",
            belief_time=now,
        )
        for i, v in enumerate(signal)
    )
    stations = Station.objects.bulk_create(Station(station_id=f"bench-{i:04d}") for i in range(vehicles))
    rng = np.random.default_rng(7)
    rows = 0
    t = np.arange(0, SPAN_S, interval, dtype=float)
    target = -np.interp(t, np.arange(signal.size) * 2.0, signal) * 10_000  # W, + charging
    for station in track(stations, "seeding meter values"):
        power = np.empty_like(target)
        p = 0.0
        for i, goal in enumerate(target):  # first-order lag, 3 s time constant
            p += (goal - p) * (1 - np.exp(-interval / 3.0))
            power[i] = p
        # Meter noise as the edge agent's simulated meter has it: 0.2 % of reading + 5 W (hardware/sim.py).
        noise = rng.normal(0, 1, power.size) * (noise_pct / 100 * np.abs(power) + 5.0)
        measured = np.rint(power + noise)
        imported = np.concatenate([[0.0], np.cumsum(np.clip(power, 0, None) * interval / 3600)])[:-1]
        exported = np.concatenate([[0.0], np.cumsum(np.clip(-power, 0, None) * interval / 3600)])[:-1]
        batch = []
        for i, ti in enumerate(t):
            at = HOUR + timedelta(seconds=float(ti))
            for measurand, value, unit in (
                ("Power.Active.Import", max(measured[i], 0), "W"),
                ("Power.Active.Export", max(-measured[i], 0), "W"),
                ("Energy.Active.Import.Register", round(imported[i]), "Wh"),
                ("Energy.Active.Export.Register", round(exported[i]), "Wh"),
            ):
                row = MeterValue(
                    station=station,
                    evse_id=1,
                    timestamp=at,
                    received_at=at + timedelta(seconds=1),
                    measurand=measurand,
                    value=int(value),
                    unit=unit,
                    source="MeterValues",
                )
                batch.append(row)
                if rng.random() < 0.02:  # retransmitted
                    batch.append(
                        MeterValue(
                            station=station,
                            evse_id=1,
                            timestamp=at,
                            received_at=at + timedelta(seconds=30),
                            measurand=measurand,
                            value=int(value),
                            unit=unit,
                            source="MeterValues",
                        )
                    )
        MeterValue.objects.bulk_create(batch, batch_size=5000)
        rows += len(batch)
    return award, rows


def bench_db(vehicles: int, interval: int, noise_pct: float) -> list[tuple[str, str, str, str]]:
    from django.db import transaction

    from markets.regulation.performance import performance_score_compute
    from markets.regulation.reconciliation import reconciliation_report
    from markets.regulation.settling import settlement_compute

    t0 = time.perf_counter()
    with transaction.atomic():
        award, rows = seed(vehicles, interval, noise_pct)
    seeded = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = performance_score_compute(product=award.product, period_start=HOUR)
    scored = time.perf_counter() - t0
    t0 = time.perf_counter()
    settlement = settlement_compute(award=award, period_start=HOUR)
    settled = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = reconciliation_report(start=HOUR, end=HOUR + timedelta(hours=1))
    reconciled = time.perf_counter() - t0
    checks = [c for row in report for c in (row.import_check, row.export_check) if c.register_wh]
    worst = max(abs(c.relative or Decimal(0)) for c in checks)
    return [
        (f"seed {rows:,} meter rows", f"{seeded:.1f} s", "", "(setup)"),
        (f"score 1 h, {vehicles} vehicles", f"{scored:.2f} s", f"composite {score.composite}", ""),
        (f"settle 1 h, {vehicles} vehicles", f"{settled:.2f} s", f"net {settlement.net} USD", ""),
        ("score + settle", f"{scored + settled:.2f} s", "", "< 60 s"),
        ("reconciliation", f"{reconciled:.2f} s", f"worst {float(worst) * 100:.4f} %", "agree <= 0.1 %"),
        ("duplicates ignored", str(score.duplicates_ignored), f"{score.meter_values:,} readings used", "0 counted"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=100)
    parser.add_argument("--interval", type=int, default=2, help="meter reporting interval, s")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--noise-pct", type=float, default=0.2, help="meter noise, %% of reading (+ 5 W)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    rows = bench_pure(args.repeat)
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        rows += bench_db(args.vehicles, args.interval, args.noise_pct)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(f"{'figure':<34} {'value':>12}  {'detail':<28} target")
    for name, value, detail, target in rows:
        print(f"{name:<34} {value:>12}  {detail:<28} {target}")
    print(f"({connection.vendor}; shared, loaded 2-core machine: figures vary with load)")


if __name__ == "__main__":
    main()
