"""Write the one-day depot load profile ``markets/data/depot-load-weekday-5min.csv`` (the site's import without the
fleet, 5-minute means, in the interval-data upload format), or a variant of it for another day.

The profile is synthetic, built from end uses whose timing follows the usual shape of warehouse / logistics-depot
load (an overnight refrigeration base, a ramp at the early shift's start, a cooling peak in the afternoon, the
handover charging of the forklifts), with these assumptions (kW) for a mid-size refrigerated depot on a summer
weekday, local time America/New_York:

* refrigeration: 52 kW all day, compressors cycling +-6 kW over a 40-minute period;
* lighting, dock doors and conveyors: 0 before 05:00, up to 45 kW by 06:30, down to 5 kW between 18:00 and 20:00;
* offices and IT: 10 kW 07:00-18:00;
* cooling: 40 kW x sin(pi (h - 8) / 14)^1.5 between 08:00 and 22:00 (highest at 15:00);
* forklift charging at the shift handovers: 20 kW 06:00-07:00 and 35 kW 14:30-16:00;
* meter-to-meter noise: normal, sigma 2.5 kW per 5 minutes (seeded).

The default (seed 1, scale 1.0) is the committed file: peak about 190 kW at 15:00-15:30, overnight about 55 kW.
Other seeds and scales give the "history" days the peak-shaving bench forecasts from.

Usage: ``python bench/depot_load_profile.py [--day 2025-07-15] [--seed 1] [--scale 1.0] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import math
import random
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "markets" / "data" / "depot-load-weekday-5min.csv"
ZONE = ZoneInfo("America/New_York")
STEP_MIN = 5


def _ramp(h: float, start: float, end: float) -> float:
    """0 before ``start``, 1 after ``end``, linear between."""
    return min(1.0, max(0.0, (h - start) / (end - start)))


def load_kw(h: float, noise: float = 0.0) -> float:
    """The depot's load without the fleet at local hour ``h`` (0-24), kW."""
    refrigeration = 52.0 + 6.0 * math.sin(2 * math.pi * h * 60 / 40)
    lighting = 45.0 * _ramp(h, 5.0, 6.5) - 40.0 * _ramp(h, 18.0, 20.0)
    offices = 10.0 if 7.0 <= h < 18.0 else 0.0
    cooling = 40.0 * math.sin(math.pi * (h - 8) / 14) ** 1.5 if 8.0 <= h < 22.0 else 0.0
    forklifts = (20.0 if 6.0 <= h < 7.0 else 0.0) + (35.0 if 14.5 <= h < 16.0 else 0.0)
    return refrigeration + lighting + offices + cooling + forklifts + noise


def profile(day: date, *, seed: int = 1, scale: float = 1.0) -> list[tuple[datetime, int]]:
    """(local interval start, mean import W) for each 5-minute interval of ``day``: the mean of the minute values."""
    rng = random.Random(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=ZONE)
    out = []
    for k in range(24 * 60 // STEP_MIN):
        noise = rng.gauss(0.0, 2.5)
        minutes = [load_kw((k * STEP_MIN + m + 0.5) / 60, noise) for m in range(STEP_MIN)]
        out.append((start + timedelta(minutes=k * STEP_MIN), round(scale * 1000 * sum(minutes) / STEP_MIN)))
    return out


def write(path: Path, rows: list[tuple[datetime, int]]) -> None:
    lines = ["interval_start,interval_minutes,import_w"]
    lines += [f"{t.isoformat()},{STEP_MIN},{w}" for t, w in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", type=date.fromisoformat, default=date(2025, 7, 1))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = profile(args.day, seed=args.seed, scale=args.scale)
    write(args.out, rows)
    peak = max(rows, key=lambda r: r[1])
    lowest, kwh = min(w for _, w in rows) / 1000, sum(w for _, w in rows) / 12 / 1000
    print(f"{args.out}: {len(rows)} intervals, peak {peak[1] / 1000:.1f} kW at {peak[0]:%H:%M}, lowest {lowest:.1f} kW,"
          f" energy {kwh:.0f} kWh")  # fmt: skip


if __name__ == "__main__":
    main()
