"""Regulation pages: reports (signal vs response, scores, revenue) and the audit trail of a settlement figure.

Thin views: parse the request, call selectors/services, render. Logged-in users only. Award-level figures (scores,
award settlements, the chart of the fleet's response): operators and holders of ``markets.view_settlement`` all of
them, a bidding admin those of their organisations' portfolios; vehicle lines (revenue): a fleet manager those of
their organisations' vehicles. Another organisation's settlement: 404 (``markets.regulation.selectors``).
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chargers.models import MeterValue
from markets.regulation.api import settlement_csv
from markets.regulation.charts import revenue_chart, scores_chart, signal_chart
from markets.regulation.models import Settlement
from markets.regulation.reports import CSV_KINDS, regulation_report, report_csv
from markets.regulation.scoring import HOURLY_ROWS
from markets.regulation.selectors import (
    POWER_EXPORT,
    POWER_IMPORT,
    POWER_MAX_AGE_S,
    REGISTER_EXPORT,
    REGISTER_IMPORT,
    charge_point_power,
    market_wide,
    settlement_lines_for,
    settlements_for,
)

AUDIT_ROWS_SHOWN = 120
MAX_DAYS = 62


def _period(request: HttpRequest) -> tuple[datetime, datetime, int]:
    """``days`` (1-62, default 7) up to ``until`` (ISO 8601 with an offset, default now); ValueError says what is
    wrong."""
    days = request.GET.get("days", "7")
    if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS}")
    until = parse_datetime(request.GET.get("until", "")) or timezone.now()
    if timezone.is_naive(until):
        raise ValueError("until must be ISO 8601 with an offset")
    return until - timedelta(days=int(days)), until, int(days)


def _score_id(request: HttpRequest) -> int | None:
    chosen = request.GET.get("score", "")
    return int(chosen) if chosen.isdigit() else None


@login_required
def regulation_reports(request: HttpRequest) -> HttpResponse:
    try:
        since, until, days = _period(request)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    report = regulation_report(user=request.user, since=since, until=until, score_id=_score_id(request))
    revenue_by = "hour" if days <= 2 else "day"
    query = request.GET.copy()
    query.pop("score", None)
    context: dict[str, Any] = {
        "r": report,
        "days": days,
        "until": until,
        "query": query.urlencode(),
        "revenue_by": revenue_by,
        # Figures for plotly.js, handed to the page with json_script (never |safe).
        "revenue_chart": revenue_chart(report, revenue_by) if report.revenue[revenue_by] else None,
        "scores_chart": scores_chart(report) if report.scores else None,
        "signal_chart": signal_chart(report.series) if report.series and not report.series.error else None,
        "csv_kinds": CSV_KINDS,
    }
    return render(request, "markets/regulation/reports.html", context)


@login_required
def regulation_report_csv(request: HttpRequest, kind: str) -> HttpResponse:
    """One series of the page as CSV (``markets.regulation.reports.report_csv``): what the page plots or lists for
    the same ``days``, ``until`` and ``score``."""
    if kind not in CSV_KINDS:
        raise Http404(f"no CSV of {kind!r}")
    try:
        since, until, _ = _period(request)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    report = regulation_report(user=request.user, since=since, until=until, score_id=_score_id(request))
    filename, text = report_csv(report, kind)
    response = HttpResponse(text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
def regulation_lines_csv(request: HttpRequest) -> HttpResponse:
    since = parse_datetime(request.GET.get("since", "")) or timezone.now() - timedelta(days=7)
    until = parse_datetime(request.GET.get("until", "")) or timezone.now()
    if timezone.is_naive(since) or timezone.is_naive(until) or since >= until:
        return HttpResponseBadRequest("since and until must be ISO 8601 with an offset, since before until")
    lines = settlement_lines_for(request.user).filter(
        settlement__period_start__gte=since, settlement__period_start__lt=until
    )
    return settlement_csv(lines, f"settlement-{since:%Y%m%d%H}-{until:%Y%m%d%H}.csv")


def _visible_settlement(user: Any, pk: int) -> Settlement:
    """The settlement if the user sees its award figures (operator, bidding admin of its portfolio) or one of its
    vehicle lines (fleet manager of the owner); else 404, as if it did not exist."""
    visible = (
        settlements_for(user).filter(pk=pk).exists() or settlement_lines_for(user).filter(settlement_id=pk).exists()
    )
    if not visible:
        raise Http404("no such settlement")
    return get_object_or_404(Settlement.objects.select_related("award__product__operator", "score"), pk=pk)


def _audit_line(settlement: Settlement, line_id: str | None, user: Any) -> Any:
    lines = settlement_lines_for(user).filter(settlement=settlement)
    if line_id is not None:
        if not line_id.isdigit():
            raise Http404("no such line")
        return get_object_or_404(lines, pk=int(line_id))
    return lines.order_by("station__station_id", "evse_id").first()


@login_required
def settlement_audit(request: HttpRequest, pk: int) -> HttpResponse:
    """A settlement figure traced to meter values: award and prices, score, the formula with the exact numbers,
    each vehicle line, and for one line the readings it was computed from (recounted and re-hashed here)."""
    settlement = _visible_settlement(request.user, pk)
    line = _audit_line(settlement, request.GET.get("line"), request.user)
    wide = market_wide(request.user)
    order = ("station__station_id", "evse_id")
    context: dict[str, Any] = {
        "s": settlement,
        "market_wide": wide,
        "lines": (settlement.lines.select_related("station") if wide else settlement_lines_for(request.user))
        .filter(settlement=settlement)
        .order_by(*order),
        "line": line,
        "awarded_mw": settlement.awarded_w / 1_000_000,
        # The award's figures (its net, prices, score) are the award holder's: a fleet manager with one line in a
        # shared award must not see them (the net minus their own lines would be the other tenants' revenue).
        "award_figures": wide or settlements_for(request.user).filter(pk=settlement.pk).exists(),
    }
    if line is not None:
        context.update(_line_evidence(settlement, line))
    return render(request, "markets/regulation/audit.html", context)


def _line_evidence(settlement: Settlement, line: Any) -> dict[str, Any]:
    """Re-read the line's meter values now and check them against what the settlement recorded."""
    end = settlement.period_start + timedelta(seconds=(HOURLY_ROWS - 1) * 10 + 1)
    series = [
        s
        for s in charge_point_power(start=settlement.period_start, end=end, stations=[line.station_id])
        if s.evse_id == line.evse_id
    ]
    recount = series[0] if series else None
    readings = MeterValue.objects.filter(
        station_id=line.station_id,
        evse_id=line.evse_id,
        measurand__in=[POWER_IMPORT, POWER_EXPORT, REGISTER_IMPORT, REGISTER_EXPORT],
        timestamp__gte=settlement.period_start - timedelta(seconds=POWER_MAX_AGE_S),
        timestamp__lt=end,
    ).order_by("timestamp", "measurand", "id")
    return {
        "recount_matches": recount is not None and recount.digest == line.meter_digest,
        "recount_count": len(recount.meter_ids) if recount else 0,
        "recount_duplicates": recount.duplicates if recount else 0,
        "readings": list(readings[:AUDIT_ROWS_SHOWN]),
        "readings_total": readings.count(),
    }


@login_required
def settlement_line_readings_csv(request: HttpRequest, pk: int, line_pk: int) -> HttpResponse:
    """Every meter reading behind one settlement line, as CSV (ids, timestamps, received_at, values)."""
    settlement = _visible_settlement(request.user, pk)
    line = _audit_line(settlement, str(line_pk), request.user)
    end = settlement.period_start + timedelta(seconds=(HOURLY_ROWS - 1) * 10 + 1)
    readings = MeterValue.objects.filter(
        station_id=line.station_id,
        evse_id=line.evse_id,
        measurand__in=[POWER_IMPORT, POWER_EXPORT, REGISTER_IMPORT, REGISTER_EXPORT],
        timestamp__gte=settlement.period_start - timedelta(seconds=POWER_MAX_AGE_S),
        timestamp__lt=end,
    ).order_by("timestamp", "measurand", "id")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="settlement-{pk}-line-{line.pk}-readings.csv"'
    writer = csv.writer(response)
    writer.writerow(["id", "timestamp", "received_at", "measurand", "phase", "value", "unit", "source"])
    for r in readings.iterator():
        writer.writerow(
            [r.pk, r.timestamp.isoformat(), r.received_at.isoformat(), r.measurand, r.phase, r.value, r.unit, r.source]
        )
    return response
