"""Fleet power history for the dashboard: one selector produces the series, so the chart and its CSV are the same
numbers (the view plots :func:`power_history` and the CSV writes :func:`power_history_csv` of the same result).

Each bucket's fleet power is the sum over the user's stations of the station's mean net power (import - export) in
the bucket, from stored meter values (averaged in the database, then folded into buckets here). Readings the demo's
simulated history generated (``MeterValue.source == "simulated"``) are a series of their own, so a chart shows them
apart. The live chart's seed (:func:`recent_power`) is the same data at 5-s resolution over the last minutes.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Avg, BooleanField, ExpressionWrapper, Q
from django.db.models.functions import TruncHour, TruncMinute

from chargers.models import MeterValue
from fleet.selectors import stations_for
from markets.regulation import scoring
from markets.regulation.selectors import charge_point_power

POWER_IMPORT = "Power.Active.Import"
POWER_EXPORT = "Power.Active.Export"
SIMULATED_SOURCE = "simulated"

#: span -> (length, bucket, the database truncation the bucket is folded from)
SPANS: dict[str, tuple[timedelta, timedelta, str]] = {
    "day": (timedelta(days=1), timedelta(minutes=5), "minute"),
    "week": (timedelta(days=7), timedelta(hours=1), "hour"),
    "month": (timedelta(days=30), timedelta(hours=4), "hour"),
}


@dataclass(frozen=True)
class PowerHistory:
    span: str
    start: datetime
    end: datetime
    bucket_s: int
    times: list[datetime]  # bucket starts (UTC)
    measured_kw: list[float | None]  # None: no reading in the bucket
    simulated_kw: list[float | None]

    def as_dict(self) -> dict[str, object]:
        return {
            "span": self.span,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "bucket_s": self.bucket_s,
            "times": [t.isoformat() for t in self.times],
            "measured_kw": self.measured_kw,
            "simulated_kw": self.simulated_kw,
        }


def power_history(*, user: AbstractBaseUser | AnonymousUser, span: str, end: datetime) -> PowerHistory:
    """Mean fleet power (kW, + charging) per bucket over the ``span`` ending at ``end``."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {', '.join(SPANS)}, not {span!r}")
    length, bucket, trunc = SPANS[span]
    bucket_s = int(bucket.total_seconds())
    end_s = (int(end.timestamp()) // bucket_s + 1) * bucket_s
    end = datetime.fromtimestamp(end_s, UTC)
    start = end - length
    truncate = TruncMinute("timestamp", tzinfo=UTC) if trunc == "minute" else TruncHour("timestamp", tzinfo=UTC)
    rows = (
        MeterValue.objects.filter(
            station__in=stations_for(user),
            timestamp__gte=start,
            timestamp__lt=end,
            measurand__in=(POWER_IMPORT, POWER_EXPORT),
            phase="",
            location__in=("", "Outlet"),
        )
        .annotate(at=truncate, simulated=ExpressionWrapper(Q(source=SIMULATED_SOURCE), output_field=BooleanField()))
        .values("at", "station_id", "evse_id", "measurand", "simulated")
        .annotate(mean=Avg("value"))
        .values_list("at", "station_id", "evse_id", "measurand", "simulated", "mean")
    )
    # (bucket, simulated) -> charge point -> measurand -> list of per-truncation means
    folded: dict[tuple[int, bool], dict[tuple[int, int], dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    evse_reporting: set[int] = set()
    for at, station, evse, measurand, simulated, mean in rows:
        index = (int(at.timestamp()) - int(start.timestamp())) // bucket_s
        folded[(index, bool(simulated))][(station, evse)][measurand].append(float(mean))
        if evse:
            evse_reporting.add(station)
    count = int(length / bucket)
    series = {False: [None] * count, True: [None] * count}  # type: dict[bool, list[float | None]]
    for (index, simulated), points in folded.items():
        if not 0 <= index < count:
            continue
        total = 0.0
        for (station, evse), by_measurand in points.items():
            if evse == 0 and station in evse_reporting:  # the main meter of a station whose EVSEs report
                continue
            imported = np.mean(by_measurand[POWER_IMPORT]) if by_measurand.get(POWER_IMPORT) else 0.0
            exported = np.mean(by_measurand[POWER_EXPORT]) if by_measurand.get(POWER_EXPORT) else 0.0
            total += float(imported - exported)
        series[simulated][index] = round(total / 1000, 3)
    return PowerHistory(
        span=span,
        start=start,
        end=end,
        bucket_s=bucket_s,
        times=[start + i * bucket for i in range(count)],
        measured_kw=series[False],
        simulated_kw=series[True],
    )


CSV_COLUMNS = ["bucket_start_utc", "bucket_s", "fleet_power_kw", "simulated"]


def power_history_csv(history: PowerHistory) -> str:
    """The plotted series as CSV: one row per bucket with data (measured and simulated rows apart)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, at in enumerate(history.times):
        for simulated, values in ((False, history.measured_kw), (True, history.simulated_kw)):
            if values[i] is not None:
                writer.writerow([at.isoformat(), history.bucket_s, f"{values[i]:.3f}", "yes" if simulated else "no"])
    return out.getvalue()


def recent_power(
    *, user: AbstractBaseUser | AnonymousUser, end: datetime, minutes: int = 15, step_s: int = 5
) -> dict[str, list[object]]:
    """Fleet power (kW) every ``step_s`` over the last ``minutes``, from stored meter values: the live chart starts
    from this instead of from nothing. A station's reading holds for at most 60 s (an idle one reports every 60 s);
    past that the station counts 0."""
    start = end - timedelta(minutes=minutes)
    pks = list(stations_for(user).values_list("pk", flat=True))
    grid = np.arange(start.timestamp(), end.timestamp(), step_s, dtype=float)
    total = np.zeros(grid.shape)
    for series in charge_point_power(start=start, end=end, stations=pks):
        held = scoring.sample_hold(series.times_s, series.values, grid, max_age_s=60.0)
        total += np.nan_to_num(held, nan=0.0)
    return {
        "times": [datetime.fromtimestamp(t, UTC).isoformat() for t in grid.tolist()],
        "kw": [round(v / 1000, 3) for v in total.tolist()],
    }
