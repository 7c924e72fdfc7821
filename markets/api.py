"""REST API for bids and awards.

Who: operators and the bidding desk (``markets.bid_admin``) every portfolio; a bidding admin the ``fleet-<id>``
portfolios of their organisations (another portfolio's bid: 404); anyone without a bidding role: 403. API keys
read with scope ``read`` and never write (bids carry no key scope): writes are session (or token) only.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from django.db.models import QuerySet
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.permissions import ReadKeys
from fleet.problems import Problem
from fleet.selectors import key_narrowed
from markets.models import Award, Bid, BidEvent
from markets.selectors import awards_for, bids_for, may_bid
from markets.services.bids import MarketError, StaleBid, bid_edit, bid_transition


class Bidder(ReadKeys):
    """A bidding role (operator, bidding desk, bidding admin of some organisation); keys read only."""

    message = "bids and awards are for operators and bidding admins"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and may_bid(request.user)


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
        raise Problem(status=409, detail=str(exc), code="stale") from exc
    except MarketError as exc:
        raise Problem(status=400, detail=str(exc), code="refused") from exc
    return Response(BidSerializer(bid).data)


class BidViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = BidSerializer
    permission_classes = [Bidder]

    def get_queryset(self) -> QuerySet[Bid]:
        qs = key_narrowed(bids_for(self.request.user), self.request.auth).order_by("interval_start", "id")
        if status_ := self.request.query_params.get("status"):
            qs = qs.filter(status=status_)
        return qs

    @action(detail=True, methods=["post"])
    def edit(self, request: Request, pk: str) -> Response:
        bid = self.get_object()  # another portfolio's bid: 404
        data = EditSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _bid_answer(lambda: bid_edit(bid_id=bid.pk, actor=request.user, **data.validated_data))

    @action(detail=True, methods=["post"])
    def transition(self, request: Request, pk: str) -> Response:
        bid = self.get_object()
        data = TransitionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _bid_answer(lambda: bid_transition(bid_id=bid.pk, actor=request.user, **data.validated_data))

    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str) -> Response:
        bid = self.get_object()
        return Response(EventSerializer(BidEvent.objects.filter(bid=bid), many=True).data)


class AwardViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AwardSerializer
    permission_classes = [Bidder]

    def get_queryset(self) -> QuerySet[Award]:
        return key_narrowed(awards_for(self.request.user), self.request.auth).order_by("interval_start", "id")
