"""Reads for the regulation and revenue pages: one :func:`regulation_report` per page view, and the CSV of any of its
series (:func:`report_csv`) built from that same report, so a download holds exactly what the page plots or lists.

Scoped as the rest of :mod:`markets.regulation.selectors`: award figures (scores, award settlements, the signal vs
response chart) for operators, auditors and the bidding admins of the award's portfolio; revenue (settlement lines)
and the reconciliation of their charge points for the fleet managers of the vehicles' organisations.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from markets.models import Product
from markets.peak.models import PeakSettlement
from markets.peak.selectors import peak_settlements_for
from markets.regulation.models import PerformanceScoreRecord, Settlement
from markets.regulation.performance import regulation_trace
from markets.regulation.reconciliation import ReconciliationRow, reconciliation_report
from markets.regulation.selectors import (
    MONEY_FIELDS,
    PRODUCT_NAMES,
    market_wide,
    revenue_by,
    scores_for,
    settlement_lines_for,
    settlements_for,
)
from markets.regulation.services import RegulationError

REVENUE_GROUPS = ("hour", "day", "product", "vehicle")
ROWS_SHOWN = 200  # scores and settlements listed on the page (the CSV holds the same rows)


@dataclass(frozen=True)
class SignalSeries:
    """One scored period's signal and the fleet's measured response on the 10-s scoring rows (MW, + = regulation
    up), and the fleet's metered power (kW, + = charging)."""

    score: PerformanceScoreRecord
    times: list[datetime]
    signal_mw: list[float]
    response_mw: list[float]
    fleet_kw: list[float]
    capacity_mw: float
    error: str = ""  # why there is no series (the stored data no longer covers the period)


def signal_series(*, score: PerformanceScoreRecord) -> SignalSeries:
    """The series a score was computed on, recomputed from the stored signal, basepoint and meter values."""
    try:
        trace = regulation_trace(
            product=score.product,
            portfolio=score.portfolio,
            start=score.period_start,
            rows=score.rows,
            capacity_w=score.capacity_w,
        )
    except RegulationError as exc:
        return SignalSeries(score, [], [], [], [], score.capacity_w / 1e6, str(exc))
    return SignalSeries(
        score=score,
        times=[datetime.fromtimestamp(t, UTC) for t in trace.grid_s],
        signal_mw=np.round(trace.reg_mw, 4).tolist(),
        response_mw=np.round(trace.response_mw, 4).tolist(),
        fleet_kw=np.round(trace.fleet_power_w / 1000, 2).tolist(),
        capacity_mw=trace.capacity_w / 1e6,
    )


@dataclass
class RegulationReport:
    since: datetime
    until: datetime
    award_figures: bool  # the user sees scores and award settlements (else revenue of their vehicles only)
    scores: list[PerformanceScoreRecord] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)
    revenue: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reconciliation: list[ReconciliationRow] = field(default_factory=list)
    series: SignalSeries | None = None

    @property
    def currency(self) -> str:
        """The currency of the period's revenue (the first one when, unusually, there are several)."""
        for rows in self.revenue.values():
            for row in rows:
                return str(row["currency"])
        return "USD"

    @property
    def net_total(self) -> Decimal | None:
        """Net settled revenue of the period (the user's vehicles' lines); None when nothing settled."""
        rows = self.revenue.get("day", [])
        return sum((row["net"] for row in rows), Decimal(0)) if rows else None

    @property
    def mean_score(self) -> Decimal | None:
        if not self.scores:
            return None
        return (sum((s.composite for s in self.scores), Decimal(0)) / len(self.scores)).quantize(Decimal("0.001"))

    @property
    def reconciled(self) -> bool:
        return all(r.agrees for r in self.reconciliation)


def regulation_report(*, user: Any, since: datetime, until: datetime, score_id: int | None = None) -> RegulationReport:
    """Everything the regulation page shows for ``user`` over ``[since, until)``; the signal chart of the score
    ``score_id`` (one the user may see), else of the newest scored period."""
    lines = settlement_lines_for(user).filter(settlement__period_start__gte=since, settlement__period_start__lt=until)
    scores = scores_for(user).filter(period_start__gte=since, period_start__lt=until).order_by("-period_start")
    settlements = settlements_for(user).filter(period_start__gte=since, period_start__lt=until)
    peak = peak_settlements_for(user).filter(period_start__gte=since, period_start__lt=until)
    report = RegulationReport(
        since=since,
        until=until,
        award_figures=market_wide(user) or scores.exists() or settlements.exists(),
        revenue=revenue_all(lines=lines, peak=peak, by_groups=REVENUE_GROUPS),
        reconciliation=reconciliation_report(start=since, end=until, lines=lines),
    )
    if report.award_figures:
        report.scores = list(scores[:ROWS_SHOWN])
        report.settlements = list(settlements.order_by("-period_start", "award_id")[:ROWS_SHOWN])
        chosen = scores.filter(pk=score_id).first() if score_id is not None else scores.first()
        if chosen is not None:
            report.series = signal_series(score=chosen)
    return report


PEAK = PRODUCT_NAMES[Product.Kind.PEAK_SHAVING]


def peak_revenue_by(settlements: Iterable[PeakSettlement], *, by: str) -> list[dict[str, Any]]:
    """Peak shaving's money on the revenue grid: each billing period's avoided demand charge
    (:class:`markets.peak.models.PeakSettlement`) at its period start, as ``net`` (no credit parts, no vehicle
    lines: it is the site's bill, so it has no ``vehicle`` rows)."""
    if by == "vehicle":
        return []
    totals: dict[tuple[Any, str], dict[str, Any]] = {}
    for settlement in settlements:
        start = settlement.period_start.astimezone(UTC)
        key: Any = {
            "hour": start.replace(minute=0, second=0, microsecond=0),
            "day": start.date(),
            "product": PEAK,
        }[by]
        row = totals.setdefault(
            (key, settlement.currency),
            {"key": key, "product": PEAK, "currency": settlement.currency, **dict.fromkeys(MONEY_FIELDS, Decimal(0)),
             "import_wh": 0, "export_wh": 0, "lines": 0},
        )  # fmt: skip
        row["net"] += settlement.avoided
        row["lines"] += 1
    return list(totals.values())


def revenue_all(
    *, lines: Any, peak: Iterable[PeakSettlement], by_groups: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    """Every product's revenue side by side per grouping: settlement lines (regulation, reserve) and peak
    shaving's avoided demand charges, ordered by key then product."""
    peak_rows = list(peak)
    out = {}
    for by in by_groups:
        rows = revenue_by(lines, by=by) + peak_revenue_by(peak_rows, by=by)
        out[by] = sorted(rows, key=lambda r: (str(r["key"]), r["product"], r["currency"]))
    return out


# --- CSV: the series as the page shows them ---------------------------------------------------------------------------

CSV_KINDS = ("signal", "scores", "settlements", *(f"revenue-{by}" for by in REVENUE_GROUPS), "reconciliation")


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def report_csv(report: RegulationReport, kind: str) -> tuple[str, str]:
    """(file name, CSV text) of one of the report's series: ``signal`` (the chart's three traces), ``scores``,
    ``settlements``, ``revenue-hour|day|product|vehicle`` (the tables), ``reconciliation``."""
    header, rows = _table(report, kind)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([_iso(v) for v in row] for row in rows)
    stamp = f"{report.since:%Y%m%d%H}-{report.until:%Y%m%d%H}"
    if kind == "signal" and report.series is not None:
        stamp = f"{report.series.score.period_start:%Y%m%d%H}-{report.series.score.portfolio}"
    return f"regulation-{kind}-{stamp}.csv", out.getvalue()


def _table(report: RegulationReport, kind: str) -> tuple[list[str], list[list[Any]]]:
    if kind == "signal":
        s = report.series
        rows = [] if s is None else [list(r) for r in zip(s.times, s.signal_mw, s.response_mw, s.fleet_kw, strict=True)]
        return ["time_utc", "signal_mw", "response_mw", "fleet_power_kw"], rows
    if kind == "scores":
        header = ["period_start", "product", "portfolio", "kind", "capacity_mw", "accuracy", "delay", "precision"]
        header += ["composite", "passed", "readings", "duplicates_ignored"]
        return header, [
            [
                s.period_start,
                str(s.product),
                s.portfolio,
                s.kind,
                Decimal(s.capacity_w) / Decimal(1_000_000),
                s.accuracy,
                s.delay,
                s.precision,
                s.composite,
                s.passed,
                s.meter_values,
                s.duplicates_ignored,
            ]
            for s in report.scores
        ]
    if kind == "settlements":
        header = ["period_start", "product", "portfolio", "awarded_mw", "score", "capacity_credit"]
        header += ["performance_credit", "energy_amount", "degradation_cost", "net", "currency"]
        return header, [
            [
                s.period_start,
                str(s.award.product),
                s.award.portfolio,
                Decimal(s.awarded_w) / Decimal(1_000_000),
                s.score_value,
                s.capacity_credit,
                s.performance_credit,
                s.energy_amount,
                s.degradation_cost,
                s.net,
                s.currency,
            ]
            for s in report.settlements
        ]
    if kind.startswith("revenue-") and kind[8:] in REVENUE_GROUPS:
        by = kind[8:]
        money = ["capacity_credit", "performance_credit", "energy_amount", "degradation_cost", "net"]
        header = [by, "product", *money, "currency", "import_wh", "export_wh", "lines"]
        return header, [[r["key"], r["product"], *(r[m] for m in money), r["currency"], r["import_wh"], r["export_wh"],
                         r["lines"]] for r in report.revenue[by]]  # fmt: skip
    if kind == "reconciliation":
        header = ["station", "evse_id", "settled_import_wh", "register_import_wh", "settled_export_wh"]
        header += ["register_export_wh", "agrees"]
        return header, [
            [
                r.station_id,
                r.evse_id,
                r.import_check.integrated_wh,
                r.import_check.register_wh,
                r.export_check.integrated_wh,
                r.export_check.register_wh,
                r.agrees,
            ]
            for r in report.reconciliation
        ]
    raise ValueError(f"no CSV of {kind!r}: one of {', '.join(CSV_KINDS)}")
