"""REST API for bids and awards (authenticated; writes need ``markets.bid_admin``)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from django.db.models import QuerySet
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from markets.models import BID_ADMIN_PERM, Award, Bid, BidEvent
from markets.services.bids import MarketError, StaleBid, bid_edit, bid_transition


class BidAdminOrReadOnly(permissions.BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or request.user.has_perm(BID_ADMIN_PERM)


class BidSerializer(serializers.ModelSerializer):
    product = serializers.StringRelatedField()

    class Meta:
        model = Bid
        fields = [
            "id",
            "external_ref",
            "product",
            "portfolio",
            "interval_start",
            "interval_end",
            "quantity_w",
            "price",
            "proposed_quantity_w",
            "proposed_price",
            "forecast_price",
            "status",
            "version",
        ]


class AwardSerializer(serializers.ModelSerializer):
    product = serializers.StringRelatedField()
    bid_ref = serializers.CharField(source="bid.external_ref")

    class Meta:
        model = Award
        fields = [
            "id",
            "bid_ref",
            "product",
            "portfolio",
            "interval_start",
            "interval_end",
            "awarded_w",
            "clearing_price",
            "source",
            "received_at",
        ]


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = BidEvent
        fields = ["at", "actor_label", "action", "from_status", "to_status", "changes", "note"]


class EditSerializer(serializers.Serializer):
    quantity_w = serializers.IntegerField(min_value=0)
    price = serializers.DecimalField(max_digits=14, decimal_places=4, min_value=Decimal(0))
    version = serializers.IntegerField(min_value=1)


class TransitionSerializer(serializers.Serializer):
    to_status = serializers.ChoiceField(choices=[Bid.Status.APPROVED, Bid.Status.SUBMITTED, Bid.Status.DRAFT])
    version = serializers.IntegerField(min_value=1, required=False)


def _bid_answer(change: Callable[[], Bid]) -> Response:
    """Run a bid write; the bid as now stored, 409 when someone changed it first, 400 when the rules refuse it."""
    try:
        bid = change()
    except StaleBid as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    except MarketError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return Response(BidSerializer(bid).data)


class BidViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = BidSerializer
    permission_classes = [BidAdminOrReadOnly]
    queryset = Bid.objects.select_related("product", "product__operator").order_by("interval_start", "id")

    def get_queryset(self) -> QuerySet[Bid]:
        qs = super().get_queryset()
        if status_ := self.request.query_params.get("status"):
            qs = qs.filter(status=status_)
        return qs

    @action(detail=True, methods=["post"])
    def edit(self, request: Request, pk: str) -> Response:
        data = EditSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _bid_answer(lambda: bid_edit(bid_id=int(pk), actor=request.user, **data.validated_data))

    @action(detail=True, methods=["post"])
    def transition(self, request: Request, pk: str) -> Response:
        data = TransitionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _bid_answer(lambda: bid_transition(bid_id=int(pk), actor=request.user, **data.validated_data))

    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str) -> Response:
        return Response(EventSerializer(BidEvent.objects.filter(bid_id=pk), many=True).data)


class AwardViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AwardSerializer
    permission_classes = [permissions.IsAuthenticated]
    queryset = Award.objects.select_related("product", "bid").order_by("interval_start", "id")
