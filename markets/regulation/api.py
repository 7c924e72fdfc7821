"""REST API for regulation reports: performance scores, settlements, settlement lines (JSON and CSV), reconciliation.

Thin edges: one selector or service does the work, the response is shaped here. Every call is authenticated (token,
session or an API key with scope ``read``). Scores and settlements: operators and holders of
``markets.view_settlement`` all, a bidding admin those of their organisations' portfolios (with only their own
organisations' vehicle lines); settlement lines: a fleet manager's organisations' vehicles; the reconciliation is
market-wide (operators). See ``markets.regulation.selectors``.
The intake (signal values, reserve events) is the orchestrator's: ``vpp/intake/api.py``.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Prefetch
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.models import ApiKey
from fleet.permissions import ReadKeys
from fleet.selectors import key_narrowed
from markets.regulation.models import PerformanceScoreRecord, Settlement, SettlementLine
from markets.regulation.reconciliation import reconciliation_report
from markets.regulation.selectors import market_wide, scores_for, settlement_lines_for, settlements_for

MAX_REPORT_DAYS = 62


class PeriodSerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        until = attrs.get("until") or timezone.now()
        since = attrs.get("since") or until - timedelta(days=7)
        if since >= until:
            raise serializers.ValidationError("since must be before until")
        if until - since > timedelta(days=MAX_REPORT_DAYS):
            raise serializers.ValidationError(f"a report spans at most {MAX_REPORT_DAYS} days")
        return {"since": since, "until": until}


def period(request: Request) -> tuple[datetime, datetime]:
    params = PeriodSerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    return params.validated_data["since"], params.validated_data["until"]


PERIOD_PARAMS = [
    OpenApiParameter("since", str, description="ISO 8601, default: until - 7 days"),
    OpenApiParameter("until", str, description="ISO 8601, default: now"),
]


class ScoreSerializer(serializers.ModelSerializer):
    product = serializers.CharField(source="product.__str__", read_only=True)

    class Meta:
        model = PerformanceScoreRecord
        fields = [
            "id",
            "product",
            "portfolio",
            "kind",
            "period_start",
            "period_end",
            "capacity_w",
            "accuracy",
            "delay",
            "precision",
            "composite",
            "passed",
            "rows",
            "signal_mileage",
            "signal_samples",
            "meter_values",
            "duplicates_ignored",
            "stations",
            "inputs",
            "computed_at",
        ]


@extend_schema(parameters=PERIOD_PARAMS)
class ScoreListView(ListAPIView):
    """``GET /api/regulation/scores``: performance scores per hour / test."""

    serializer_class = ScoreSerializer
    permission_classes = [ReadKeys]

    def get_queryset(self) -> Any:
        since, until = period(self.request)
        scores = key_narrowed(scores_for(self.request.user), self.request.auth, "portfolio")
        return scores.filter(period_start__gte=since, period_start__lt=until)


class LineSerializer(serializers.ModelSerializer):
    station = serializers.CharField(source="station.station_id", read_only=True)

    class Meta:
        model = SettlementLine
        fields = [
            "id",
            "station",
            "evse_id",
            "vehicle",
            "vehicle_ref",
            "owner",
            "owner_ref",
            "capacity_credit",
            "performance_credit",
            "energy_amount",
            "degradation_cost",
            "net",
            "response_wh",
            "import_wh",
            "export_wh",
            "pack_throughput_wh",
            "meter_count",
            "duplicates_ignored",
            "meter_first",
            "meter_last",
            "meter_digest",
        ]


class SettlementSerializer(serializers.ModelSerializer):
    product = serializers.CharField(source="award.product.__str__", read_only=True)
    portfolio = serializers.CharField(source="award.portfolio", read_only=True)
    lines = LineSerializer(many=True, read_only=True)

    class Meta:
        model = Settlement
        fields = [
            "id",
            "award",
            "product",
            "portfolio",
            "period_start",
            "period_end",
            "score",
            "score_value",
            "awarded_w",
            "capacity_price",
            "performance_price",
            "mileage_ratio",
            "capacity_credit",
            "performance_credit",
            "energy_amount",
            "degradation_cost",
            "net",
            "exact",
            "import_wh",
            "export_wh",
            "currency",
            "computed_at",
            "lines",
        ]


def _lines(request: Request) -> Any:
    """The user's vehicles' settlement lines; a key of one organisation: that organisation's only (its holder may
    manage the fleets of several), in the list and in the CSV alike."""
    lines = settlement_lines_for(request.user)
    if isinstance(request.auth, ApiKey) and request.auth.organisation_id is not None:
        lines = lines.filter(owner_id=request.auth.organisation_id)
    return lines


@extend_schema(parameters=PERIOD_PARAMS)
class SettlementListView(ListAPIView):
    """``GET /api/regulation/settlements``: award-hour settlements with their vehicle lines (market-wide view)."""

    serializer_class = SettlementSerializer
    permission_classes = [ReadKeys]

    def get_queryset(self) -> Any:
        since, until = period(self.request)
        user = self.request.user
        # Vehicle lines nested in an award's settlement: every line market-wide, else the user's own vehicles' only.
        lines = _lines(self.request) if not market_wide(user) else SettlementLine.objects.all()
        return (
            key_narrowed(settlements_for(user), self.request.auth, "award__portfolio")
            .filter(period_start__gte=since, period_start__lt=until)
            .prefetch_related(Prefetch("lines", queryset=lines.select_related("station").order_by("id")))
        )


class LineListView(ListAPIView):
    """``GET /api/regulation/settlement-lines``: the user's vehicles' settlement lines."""

    serializer_class = LineSerializer
    permission_classes = [ReadKeys]

    @extend_schema(parameters=PERIOD_PARAMS)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        since, until = period(self.request)
        return _lines(self.request).filter(settlement__period_start__gte=since, settlement__period_start__lt=until)


CSV_COLUMNS = [
    "period_start",
    "period_end",
    "product",
    "award",
    "settlement",
    "line",
    "station",
    "evse_id",
    "vehicle",
    "owner",
    "score",
    "capacity_credit",
    "performance_credit",
    "energy_amount",
    "degradation_cost",
    "net",
    "currency",
    "response_wh",
    "import_wh",
    "export_wh",
    "pack_throughput_wh",
    "meter_count",
    "duplicates_ignored",
    "meter_first",
    "meter_last",
    "meter_digest",
]


def settlement_csv(lines: Any, filename: str) -> HttpResponse:
    """Settlement lines as CSV, one row per award-hour and vehicle, with the ids an auditor follows back."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for line in lines.order_by("settlement__period_start", "settlement_id", "station__station_id", "evse_id"):
        s = line.settlement
        writer.writerow(
            [
                s.period_start.isoformat(),
                s.period_end.isoformat(),
                str(s.award.product),
                s.award_id,
                s.pk,
                line.pk,
                line.station.station_id,
                line.evse_id,
                line.vehicle_ref,
                line.owner_ref,
                s.score_value,
                line.capacity_credit,
                line.performance_credit,
                line.energy_amount,
                line.degradation_cost,
                line.net,
                s.currency,
                line.response_wh,
                line.import_wh,
                line.export_wh,
                line.pack_throughput_wh,
                line.meter_count,
                line.duplicates_ignored,
                line.meter_first_id or "",
                line.meter_last_id or "",
                line.meter_digest,
            ]
        )
    return response


class LineCsvView(APIView):
    """``GET /api/regulation/settlement-lines.csv``: the same lines as CSV."""

    permission_classes = [ReadKeys]

    @extend_schema(parameters=PERIOD_PARAMS, responses={200: str})
    def get(self, request: Request) -> HttpResponse:
        since, until = period(request)
        lines = _lines(request).filter(settlement__period_start__gte=since, settlement__period_start__lt=until)
        return settlement_csv(lines, f"settlement-{since:%Y%m%d%H}-{until:%Y%m%d%H}.csv")


class ReconciliationView(APIView):
    """``GET /api/regulation/reconciliation``: settled energy against meter register deltas per charge point."""

    permission_classes = [ReadKeys]

    @extend_schema(parameters=PERIOD_PARAMS, responses={200: dict})
    def get(self, request: Request) -> Response:
        if not market_wide(request.user):
            raise PermissionDenied("the reconciliation is market-wide: staff or markets.view_settlement only")
        since, until = period(request)
        rows = reconciliation_report(start=since, end=until)
        return Response(
            {
                "since": since,
                "until": until,
                "tolerance": "0.1 % of the register delta (or 1 Wh)",
                "all_agree": all(r.agrees for r in rows),
                "charge_points": [_reconciliation_row(r) for r in rows],
            }
        )


def _reconciliation_row(row: Any) -> dict[str, Any]:
    def check(c: Any) -> dict[str, Any]:
        relative = c.relative
        return {
            "settled_wh": c.integrated_wh,
            "register_wh": c.register_wh,
            "difference_wh": c.difference_wh,
            "relative": None if relative is None else f"{relative:.6f}",
            "agrees": c.agrees,
        }

    return {
        "station": row.station_id,
        "evse_id": row.evse_id,
        "import": check(row.import_check),
        "export": check(row.export_check),
        "agrees": row.agrees,
    }
