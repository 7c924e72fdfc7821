"""REST intake of the regulation market: signal values and reserve events from a utility / market operator.

The orchestrator's edges (they dispatch at once, then store through ``markets.regulation.services``): every call is
authenticated (API key or session) and needs ``markets.submit_regulation_signal``; an API key also needs scope
``signal`` and, when it names a portfolio, sends for that portfolio only (403 otherwise). The WebSocket edge for the
same signal is :mod:`vpp.intake.consumers`, under the same rule.

A signal value stamped too far ahead of this server's clock, or for a portfolio with nothing awarded at its instant,
is refused with 422 (a problem document, code ``signal_refused``: the reason, and the window of instants taken);
``vpp.dispatch.services`` says why.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.models import ApiScope
from fleet.problems import Problem, ProblemSerializer
from fleet.selectors import (
    key_allows,
    key_portfolios,
    may_send_signals,
    portfolio_refusal,
    portfolios_meet,
    signal_portfolios_for,
)
from markets.models import Product
from markets.regulation.models import SignalSource
from markets.regulation.services import RegulationError, ReserveConflict, SignalConflict
from markets.selectors import product_get
from vpp.dispatch.reserve_intake import reserve_deployment_intake
from vpp.dispatch.services import SignalRefused, regulation_signal_accept


def signal_sender_check(request: Request, *, what: str) -> None:
    """403 unless the caller may send regulation values (:func:`fleet.selectors.may_send_signals`), and for an API
    key its scope ``signal``.
    Runs before the body is judged (403, not 400, for a caller who may not send at all)."""
    if not may_send_signals(request.user):
        raise PermissionDenied(f"{what} needs a utility's role, an operator, or markets.submit_regulation_signal")
    if not key_allows(request.auth, ApiScope.SIGNAL):
        raise PermissionDenied(f"{what} needs an API key with scope 'signal'")


def portfolio_check(request: Request, portfolio: str) -> None:
    """403 unless the caller may dispatch ``portfolio`` (:func:`fleet.selectors.signal_portfolios_for`: a utility
    only its organisations' ``fleet-<id>``), narrowed by an API key's organisation and portfolio."""
    refusal = portfolio_refusal(
        portfolio, portfolios_meet(signal_portfolios_for(request.user), key_portfolios(request.auth))
    )
    if refusal is not None:
        raise PermissionDenied(refusal)


class OffsetDateTimeField(serializers.DateTimeField):
    """An ISO 8601 instant that must carry its UTC offset: a bare local time from an operator is ambiguous."""

    def to_internal_value(self, value: Any) -> datetime:
        raw = str(value)
        if not (raw.endswith("Z") or "+" in raw[10:] or "-" in raw[10:]):
            raise serializers.ValidationError("give the UTC offset (e.g. 2025-07-01T14:00:02Z)")
        return super().to_internal_value(value)


class SignalInSerializer(serializers.Serializer):
    product = serializers.CharField(help_text="'<operator>:<product>', e.g. pjm:reg-d")
    portfolio = serializers.CharField(default="default", max_length=64)
    at = OffsetDateTimeField(help_text="instant the value applies from, ISO 8601 with offset")
    value = serializers.DecimalField(max_digits=12, decimal_places=8, min_value=-1, max_value=1)
    source_ref = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)

    def validate_product(self, value: str) -> Product:
        try:
            return product_get(ref=value, kind=Product.Kind.REGULATION, active_only=True)
        except Product.DoesNotExist as exc:
            raise serializers.ValidationError(str(exc)) from None


class SignalIntakeView(APIView):
    """``POST /api/regulation/signal``: one value of the regulation signal from a utility / market operator."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=SignalInSerializer,
        responses={
            201: dict,
            200: dict,
            **dict.fromkeys((400, 401, 403, 409), ProblemSerializer),
            422: OpenApiResponse(ProblemSerializer, description="refused: code signal_refused, the window taken"),
        },
        description="The answer says whether the value was dispatched; when not, ``not_dispatched`` says why.",
    )
    def post(self, request: Request) -> Response:
        received_at = time.time()  # dispatch latency is measured from here
        signal_sender_check(request, what="sending regulation signal values")
        data = SignalInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        portfolio_check(request, fields["portfolio"])
        # Check, store, then dispatch: vpp.dispatch.services explains the order.
        try:
            intake = regulation_signal_accept(
                product=fields["product"],
                portfolio=fields["portfolio"],
                value=fields["value"],
                at=fields["at"],
                source=SignalSource.UTILITY_API,
                source_ref=fields["source_ref"] or request.user.get_username(),
                user_id=request.user.pk,
                received_at=received_at,
            )
        except SignalRefused as exc:
            extra = {"window": exc.window} if exc.window else {}
            raise Problem(status=422, detail=str(exc), code="signal_refused", **extra) from exc
        except SignalConflict as exc:
            raise Problem(status=409, detail=str(exc), code="conflict") from exc
        except RegulationError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        row = intake.row
        body = {
            "id": row.pk,
            "created": intake.created,
            "product": str(row.product),
            "portfolio": row.portfolio,
            "at": row.at,
            "value": str(row.value),
            "belief_time": row.belief_time,
            "dispatched": intake.dispatched,
        }
        if not intake.dispatched:
            body["not_dispatched"] = intake.why_not
        return Response(body, status=status.HTTP_201_CREATED if intake.created else status.HTTP_200_OK)


class ReserveInSerializer(serializers.Serializer):
    portfolio = serializers.CharField(default="default", max_length=64)
    event_id = serializers.CharField(max_length=100, help_text="the operator's reference (idempotency key)")
    product = serializers.CharField(
        required=False, help_text="reserve product '<operator>:<product>'; default: the one the portfolio holds"
    )
    power_w = serializers.IntegerField(
        min_value=1, required=False, help_text="reserve asked for, W; default: all of the award in force at start"
    )
    start = OffsetDateTimeField(required=False, help_text="default: now; ISO 8601 with offset")
    end = OffsetDateTimeField(help_text="ISO 8601 with offset")

    def validate_product(self, value: str) -> Product:
        try:
            return product_get(ref=value, kind=Product.Kind.RESERVE, active_only=True)
        except Product.DoesNotExist as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("start", timezone.now())
        return attrs


class ReserveDeploymentView(APIView):
    """``POST /api/regulation/reserve``: a synchronized reserve event called on a portfolio, dispatched at once by
    itself (and carried by the regulation setpoints while signals flow), held to its end, released after.

    201 when new, 200 for the same event again, 409 for a different event under the same ``event_id``. The answer
    says whether setpoints went out (``dispatched``; ``not_dispatched`` says why not).
    """

    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=ReserveInSerializer,
        responses={201: dict, 200: dict, **dict.fromkeys((400, 401, 403, 409), ProblemSerializer)},
    )
    def post(self, request: Request) -> Response:
        received_at = time.time()  # the reserve response time is measured from here
        signal_sender_check(request, what="calling reserve deployments")
        data = ReserveInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        portfolio_check(request, data.validated_data["portfolio"])
        try:
            intake = reserve_deployment_intake(
                **data.validated_data,
                source=SignalSource.UTILITY_API,
                received_by_id=request.user.pk,
                received_at=received_at,
            )
        except ReserveConflict as exc:
            raise Problem(status=409, detail=str(exc), code="conflict") from exc
        except RegulationError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        row = intake.row
        body = {
            "id": row.pk,
            "created": intake.created,
            "portfolio": row.portfolio,
            "event_id": row.event_id,
            "product": str(row.product) if row.product else None,
            "power_w": row.power_w,
            "start": row.start,
            "end": row.end,
            "belief_time": row.belief_time,
            "dispatched": intake.dispatched,
        }
        if not intake.dispatched:
            body["not_dispatched"] = intake.why_not
        return Response(body, status=status.HTTP_201_CREATED if intake.created else status.HTTP_200_OK)
