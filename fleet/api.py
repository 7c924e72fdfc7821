"""REST API for fleets, vehicles and flexibility. Authenticated; every query is scoped to the user's organisations.

Thin edges: serializers validate, one service or selector call does the work, the response is shaped here.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from fleet import selectors, services
from fleet.models import Fleet, PlanSource, SocSource, Vehicle, VehicleState
from fleet.numerics.flexibility import fleet_flexibility, vehicle_flexibility

MAX_INTERVALS = 7 * 96


class FleetSerializer(serializers.ModelSerializer):
    organisation = serializers.CharField(source="organisation.slug", read_only=True)

    class Meta:
        model = Fleet
        fields = ["id", "organisation", "name", "mobility_floor_pct", "default_node", "timezone"]
        read_only_fields = ["id", "organisation", "name", "timezone"]


class VehicleStateSerializer(serializers.ModelSerializer):
    class Meta:
        model = VehicleState
        fields = [
            "plugged_in",
            "soc_wh",
            "soc_source",
            "soc_valid_at",
            "departure_at",
            "target_wh",
            "up_w",
            "down_w",
            "baseline_w",
            "refreshed_at",
        ]


class VehicleSerializer(serializers.ModelSerializer):
    fleet = serializers.PrimaryKeyRelatedField(read_only=True)
    effective_floor_pct = serializers.IntegerField(read_only=True)
    state = VehicleStateSerializer(read_only=True)

    class Meta:
        model = Vehicle
        fields = [
            "id",
            "fleet",
            "name",
            "vin",
            "evccid",
            "id_token",
            "model",
            "usable_capacity_wh",
            "ac_max_charge_w",
            "ac_max_discharge_w",
            "dc_max_charge_w",
            "dc_max_discharge_w",
            "charge_efficiency",
            "discharge_efficiency",
            "state_of_health",
            "equivalent_full_cycles",
            "cycles_today",
            "pack_temperature_c",
            "pack_cost_per_kwh",
            "cycle_life",
            "rated_dod",
            "mobility_floor_pct",
            "effective_floor_pct",
            "node",
            "state",
        ]
        read_only_fields = ["id", "fleet", "equivalent_full_cycles", "cycles_today", "state"]


class DepartureInSerializer(serializers.Serializer):
    departure_at = serializers.DateTimeField()
    target_soc_pct = serializers.IntegerField(min_value=0, max_value=100)


class WeeklyDepartureSerializer(serializers.Serializer):
    weekday = serializers.IntegerField(min_value=0, max_value=6, help_text="0 = Monday")
    departure_time = serializers.TimeField(help_text="wall-clock time in the fleet's time zone")
    target_soc_pct = serializers.IntegerField(min_value=0, max_value=100)


class SocInSerializer(serializers.Serializer):
    soc_pct = serializers.FloatField(min_value=0, max_value=100)
    valid_at = serializers.DateTimeField(required=False)


class HorizonSerializer(serializers.Serializer):
    intervals = serializers.IntegerField(min_value=1, max_value=MAX_INTERVALS, default=96)
    interval_s = serializers.IntegerField(min_value=60, max_value=86_400, default=900)
    hold_s = serializers.IntegerField(min_value=1, max_value=86_400, required=False)
    fleet = serializers.IntegerField(min_value=1, required=False)


_HORIZON_PARAMS = [
    OpenApiParameter("intervals", int, description="number of intervals (default 96)"),
    OpenApiParameter("interval_s", int, description="interval length in seconds (default 900)"),
    OpenApiParameter("hold_s", int, description="product delivery duration in seconds (default: one interval)"),
]


def _horizon(request: Request) -> dict[str, Any]:
    params = HorizonSerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    return dict(params.validated_data)


class FleetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet):
    serializer_class = FleetSerializer

    def get_queryset(self) -> Any:
        return selectors.fleets_for(self.request.user)


class VehicleViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    serializer_class = VehicleSerializer

    def get_queryset(self) -> Any:
        qs = selectors.vehicles_for(self.request.user).select_related("state").order_by("id")
        fleet = self.request.query_params.get("fleet")
        if fleet is not None:
            if not fleet.isdigit():
                raise ValidationError({"fleet": "must be a fleet id"})
            qs = qs.filter(fleet_id=int(fleet))
        return qs

    @extend_schema(request=DepartureInSerializer, responses={201: dict})
    @action(detail=True, methods=["post"])
    def departure(self, request: Request, pk: str | None = None) -> Response:
        """Set a departure plan as the fleet manager (it overrides the station's and the weekly schedule)."""
        vehicle = self.get_object()
        data = DepartureInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        plan = services.departure_plan_set(
            vehicle=vehicle,
            departure_at=data.validated_data["departure_at"],
            target_soc_pct=data.validated_data["target_soc_pct"],
            source=PlanSource.FLEET_MANAGER,
        )
        body = {"id": plan.id, "departure_at": plan.departure_at, "target_soc_pct": plan.target_soc_pct}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=WeeklyDepartureSerializer(many=True), responses={200: WeeklyDepartureSerializer(many=True)})
    @action(detail=True, methods=["get", "put"])
    def schedule(self, request: Request, pk: str | None = None) -> Response:
        """The vehicle's weekly departures; PUT replaces them (a list, at most one per weekday)."""
        vehicle = self.get_object()
        if request.method == "PUT":
            data = WeeklyDepartureSerializer(data=request.data, many=True)
            data.is_valid(raise_exception=True)
            rows = [(r["weekday"], r["departure_time"], r["target_soc_pct"]) for r in data.validated_data]
            try:
                services.weekly_schedule_set(vehicle=vehicle, rows=rows)
            except services.FleetError as exc:
                raise ValidationError({"detail": str(exc)}) from exc
        current = vehicle.weekly_departures.order_by("weekday")
        return Response(WeeklyDepartureSerializer(current, many=True).data)

    @extend_schema(request=SocInSerializer, responses={201: dict})
    @action(detail=True, methods=["post"])
    def soc(self, request: Request, pk: str | None = None) -> Response:
        """Record a state of charge entered by the fleet manager (resets the metered estimate chain)."""
        vehicle = self.get_object()
        data = SocInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        soc_wh = round(vehicle.usable_capacity_wh * data.validated_data["soc_pct"] / 100)
        belief = services.soc_report(
            vehicle=vehicle,
            soc_wh=soc_wh,
            valid_at=data.validated_data.get("valid_at") or timezone.now(),
            source=SocSource.FLEET_MANAGER,
        )
        body = {"id": belief.id, "soc_wh": belief.soc_wh, "valid_at": belief.valid_at, "source": belief.source}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=_HORIZON_PARAMS, responses={200: dict})
    @action(detail=True, methods=["get"])
    def flexibility(self, request: Request, pk: str | None = None) -> Response:
        """This vehicle's flexibility envelope from now (empty when its SoC is unknown)."""
        vehicle = self.get_object()
        horizon = _horizon(request)
        now = timezone.now()
        snapshot = selectors.vehicle_snapshot(vehicle, at=now)
        if snapshot is None:
            return Response({"vehicle": vehicle.id, "detail": "state of charge unknown"}, status=status.HTTP_200_OK)
        envelope = vehicle_flexibility(
            snapshot,
            start=now,
            intervals=horizon["intervals"],
            interval_s=horizon["interval_s"],
            hold_s=horizon.get("hold_s"),
        )
        return Response({"vehicle": vehicle.id, "plugged_in": snapshot.station_id is not None, **envelope.as_dict()})


class FlexibilityViewSet(viewsets.ViewSet):
    """Fleet flexibility of the user's plugged-in vehicles: total and per node."""

    @extend_schema(parameters=[*_HORIZON_PARAMS, OpenApiParameter("fleet", int)], responses={200: dict})
    def list(self, request: Request) -> Response:
        horizon = _horizon(request)
        vehicles = selectors.vehicles_for(request.user)
        fleet_id = horizon.get("fleet")
        if fleet_id is not None and not selectors.fleets_for(request.user).filter(id=fleet_id).exists():
            raise ValidationError({"fleet": "no such fleet in your organisations"})
        now = timezone.now()
        snapshots = selectors.plugged_in_snapshots(at=now, vehicles=vehicles, fleet_id=fleet_id)
        flex = fleet_flexibility(
            snapshots,
            start=now,
            intervals=horizon["intervals"],
            interval_s=horizon["interval_s"],
            hold_s=horizon.get("hold_s"),
        )
        return Response(
            {
                "vehicles": len(snapshots),
                "total": flex.total.as_dict(),
                "by_node": {node: env.as_dict() for node, env in flex.by_node.items()},
            }
        )
