"""Regulation pages: reports (signal vs response, scores, revenue) and the audit trail of a settlement figure.

Thin views: parse the request, call selectors/services, render. Logged-in users only. Award-level figures (scores,
award settlements, the chart of the fleet's response): operators and holders of ``markets.view_settlement`` all of
them, a bidding admin those of their organisations' portfolios; vehicle lines (revenue): a fleet manager those of
their organisations' vehicles. Another organisation's settlement: 404 (``markets.regulation.selectors``).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chargers.models import MeterValue
from markets.regulation.api import settlement_csv
from markets.regulation.models import PerformanceScoreRecord, Settlement
from markets.regulation.performance import regulation_trace
from markets.regulation.scoring import HOURLY_ROWS
from markets.regulation.selectors import (
    POWER_EXPORT,
    POWER_IMPORT,
    POWER_MAX_AGE_S,
    REGISTER_EXPORT,
    REGISTER_IMPORT,
    charge_point_power,
    market_wide,
    revenue_by,
    scores_for,
    settlement_lines_for,
    settlements_for,
)
from markets.regulation.services import RegulationError

AUDIT_ROWS_SHOWN = 120


def _chart(score: PerformanceScoreRecord) -> dict[str, Any] | None:
    """Signal vs measured response (MW) on the scored hour's 10-s rows, for plotly."""
    try:
        trace = regulation_trace(
            product=score.product,
            portfolio=score.portfolio,
            start=score.period_start,
            rows=score.rows,
            capacity_w=score.capacity_w,
        )
    except RegulationError:
        return None
    times = [datetime.fromtimestamp(t, UTC).isoformat() for t in trace.grid_s]
    return {
        "times": times,
        "signal_mw": np.round(trace.reg_mw, 4).tolist(),
        "response_mw": np.round(trace.response_mw, 4).tolist(),
        "fleet_kw": np.round(trace.fleet_power_w / 1000, 2).tolist(),
        "title": f"{score.product} {score.portfolio} from {score.period_start:%Y-%m-%d %H:%M} UTC",
    }


@login_required
def regulation_reports(request: HttpRequest) -> HttpResponse:
    days = request.GET.get("days", "7")
    if not days.isdigit() or not 1 <= int(days) <= 62:
        return HttpResponseBadRequest("days must be a whole number from 1 to 62")
    until = parse_datetime(request.GET.get("until", "")) or timezone.now()
    if timezone.is_naive(until):
        return HttpResponseBadRequest("until must be ISO 8601 with an offset")
    since = until - timedelta(days=int(days))
    lines = settlement_lines_for(request.user).filter(
        settlement__period_start__gte=since, settlement__period_start__lt=until
    )
    scores = scores_for(request.user).filter(period_start__gte=since, period_start__lt=until).order_by("-period_start")
    settlements = settlements_for(request.user).filter(period_start__gte=since, period_start__lt=until)
    context: dict[str, Any] = {
        "days": int(days),
        "until": until,
        "award_figures": market_wide(request.user) or scores.exists() or settlements.exists(),
        "by_day": revenue_by(lines, by="day"),
        "by_product": revenue_by(lines, by="product"),
        "by_vehicle": revenue_by(lines, by="vehicle"),
        "scores": [],
        "settlements": [],
        "chart": None,
        "chart_score": None,
    }
    if context["award_figures"]:
        context["scores"] = list(scores[:200])
        context["settlements"] = list(settlements.order_by("-period_start")[:200])
        chosen = request.GET.get("score")
        score = scores.filter(pk=int(chosen)).first() if chosen and chosen.isdigit() else scores.first()
        if score is not None:
            context["chart"] = _chart(score)
            context["chart_score"] = score
    return render(request, "markets/regulation/reports.html", context)


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
