"""REST API for fleets, vehicles and flexibility. Authenticated; every query is scoped to the user's organisations.

Who: fleets and vehicles (read and write: floor, departures, schedules, SoC) are a fleet manager's, in the
organisations where they hold that role (operators: all); another organisation's vehicle is 404, a user without
the role anywhere gets 403. Fleet flexibility (``/api/fleet/flexibility/``): fleet managers, bidding admins and
utilities of the organisation, an API key narrowed to its portfolio. API keys read with ``read`` and write with
``fleet:write``. A vehicle's identity (``vin``, ``evccid``, ``id_token``) is operator-only to change: a member
setting another tenant's token would be matched to that tenant's charging sessions.

Thin edges: serializers validate, one service or selector call does the work, the response is shaped here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet import selectors
from fleet.models import Fleet, Membership, PlanSource, Role, SocSource, Vehicle, VehicleState
from fleet.numerics.flexibility import fleet_flexibility, vehicle_flexibility
from fleet.permissions import FleetWriteKeys, ReadKeys
from fleet.services import errors, vehicles

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


IDENTITY_FIELDS = ("vin", "evccid", "id_token")


class VehicleSerializer(serializers.ModelSerializer):
    """A vehicle; its identity (``IDENTITY_FIELDS``) is read-only but for operators, and a changed value sent by
    anyone else is refused (400) rather than silently dropped."""

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

    def _operator(self) -> bool:
        request = self.context.get("request")
        return request is not None and selectors.is_operator(request.user)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if not self._operator():
            for name in IDENTITY_FIELDS:
                fields[name].read_only = True
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not self._operator() and isinstance(self.initial_data, dict):
            current = self.instance
            changed = [
                name
                for name in IDENTITY_FIELDS
                if name in self.initial_data
                and (current is None or str(self.initial_data[name] or "") != str(getattr(current, name) or ""))
            ]
            if changed:
                raise ValidationError(dict.fromkeys(changed, "only an operator changes a vehicle's identity"))
        return super().validate(attrs)


class DepartureInSerializer(serializers.Serializer):
    departure_at = serializers.DateTimeField(help_text="ISO 8601; in the future")
    target_soc_pct = serializers.IntegerField(min_value=0, max_value=100)

    def validate_departure_at(self, value: datetime) -> datetime:
        """A departure already past plans nothing: refused (400), never stored as the vehicle's next trip."""
        now = timezone.now()
        if value <= now:
            raise ValidationError(
                f"departure_at {value.isoformat()} is not in the future (server time {now.isoformat()})"
            )
        return value


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


FLEX_ROLES = (Role.FLEET_MANAGER, Role.BIDDING_ADMIN, Role.UTILITY)


def _holds_role(user: Any, roles: tuple[str, ...]) -> bool:
    return selectors.is_operator(user) or Membership.objects.filter(user_id=user.pk, role__in=roles).exists()


class FleetManagers(FleetWriteKeys):
    """Operators and fleet managers (of some organisation; the queryset scopes to which)."""

    message = "fleets and vehicles are for fleet managers"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and _holds_role(request.user, (Role.FLEET_MANAGER,))


class FlexibilityReaders(ReadKeys):
    """Operators, and fleet managers, bidding admins and utilities of some organisation."""

    message = "flexibility is for the organisation's fleet managers, bidding admins and utilities"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and _holds_role(request.user, FLEX_ROLES)


def _managed_fleets(request: Request) -> Any:
    return selectors.fleets_for_key(request.auth, selectors.fleets_for(request.user, roles=[Role.FLEET_MANAGER]))


class FleetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet):
    serializer_class = FleetSerializer
    permission_classes = [FleetManagers]

    def get_queryset(self) -> Any:
        return _managed_fleets(self.request)


class VehicleViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    serializer_class = VehicleSerializer
    permission_classes = [FleetManagers]

    def get_queryset(self) -> Any:
        qs = (
            Vehicle.objects.filter(fleet__in=_managed_fleets(self.request))
            .select_related("fleet", "fleet__organisation", "state")
            .order_by("id")
        )
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
        plan = vehicles.departure_plan_set(
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
                vehicles.weekly_schedule_set(vehicle=vehicle, rows=rows)
            except errors.FleetError as exc:
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
        belief = vehicles.soc_report(
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
    """Fleet flexibility of the plugged-in vehicles of the user's portfolios (an API key's own when it names one):
    total and per node."""

    permission_classes = [FlexibilityReaders]

    @extend_schema(parameters=[*_HORIZON_PARAMS, OpenApiParameter("fleet", int)], responses={200: dict})
    def list(self, request: Request) -> Response:
        horizon = _horizon(request)
        fleets = selectors.fleets_for_key(request.auth, selectors.fleets_for(request.user, roles=FLEX_ROLES))
        vehicles = Vehicle.objects.filter(fleet__in=fleets)
        fleet_id = horizon.get("fleet")
        if fleet_id is not None and not fleets.filter(id=fleet_id).exists():
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
