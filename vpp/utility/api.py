"""REST configuration of utility programs, their events and reports (``/api/utility/programs/...``).

Who: operators every program; bidding admins of the organisation read and change its programs; its fleet managers
read them; anyone else 403 (a program of another organisation: 404). API keys read with scope ``read`` and never
write: a program names credentials and a server the aggregator connects to, a change is a person's (audited). A key
narrowed to one organisation (or portfolio) reaches that one's programs only, as for bids and awards
(``fleet.selectors.key_narrowed``), though its holder may be a member of several.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.models import Organisation
from fleet.permissions import ReadKeys
from fleet.selectors import key_narrowed, organisations_for
from markets.models import Product
from markets.selectors import product_get
from vpp.utility.models import Protocol, UtilityEvent, UtilityProgram, UtilityProgramChange, UtilityReport
from vpp.utility.selectors import WRITE_ROLES, may_see_programs, programs_for, secret_env_prefix
from vpp.utility.services import ProgramInvalid, utility_program_create, utility_program_update


class ProgramReader(ReadKeys):
    message = "utility programs are for operators and the organisation's bidding admins and fleet managers"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and may_see_programs(request.user)


@extend_schema_field(OpenApiTypes.STR)
class ProductField(serializers.Field):
    """A product as ``operator:code`` (e.g. ``pjm:reg-d``)."""

    def to_representation(self, value: Product) -> str:
        return f"{value.operator.code}:{value.code}"

    def to_internal_value(self, data: Any) -> Product:
        try:
            return product_get(ref=str(data))
        except Product.DoesNotExist as exc:
            raise serializers.ValidationError(str(exc)) from None


class ProgramSerializer(serializers.ModelSerializer):
    organisation = serializers.SlugRelatedField(slug_field="slug", queryset=Organisation.objects.all())
    product = ProductField()
    healthy = serializers.BooleanField(read_only=True)
    credentials_dir = serializers.SerializerMethodField(
        help_text="where cert_file, key_file and ca_file are read from: this directory of UTILITY_CREDENTIALS_DIR"
    )
    secret_env_prefix = serializers.SerializerMethodField(help_text="secret_env must start with it")

    def get_credentials_dir(self, program: UtilityProgram) -> str:
        return f"{program.organisation.slug}/"

    def get_secret_env_prefix(self, program: UtilityProgram) -> str:
        return secret_env_prefix(program.organisation)

    class Meta:
        model = UtilityProgram
        fields = [
            "id", "organisation", "name", "protocol", "endpoint", "program_ref", "client_name", "portfolio",
            "product", "cert_file", "key_file", "ca_file", "secret_env", "level_step_w", "poll_s", "report_s",
            "enabled", "credentials_dir", "secret_env_prefix",
            # status (written by the client)
            "healthy", "registration_ref", "last_contact_at", "last_event_at", "last_report_at", "last_error",
            "last_error_at", "errors_in_a_row", "created_at",
        ]  # fmt: skip
        read_only_fields = [
            "registration_ref", "last_contact_at", "last_event_at", "last_report_at", "last_error", "last_error_at",
            "errors_in_a_row", "created_at",
        ]  # fmt: skip
        extra_kwargs = {"protocol": {"choices": Protocol.choices}}


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = UtilityEvent
        fields = [
            "id", "protocol", "source", "event_ref", "modification", "kind", "start", "end", "power_w", "limit_w",
            "status", "status_reason", "opt", "dispatch_ref", "first_dispatch_at", "received_at", "payload",
        ]  # fmt: skip


class ReportSerializer(serializers.ModelSerializer):
    class Meta:
        model = UtilityReport
        fields = [
            "id", "event", "kind", "period_start", "period_end", "values", "basis", "created_at", "sent_at",
            "accepted", "error",
        ]  # fmt: skip


class ChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = UtilityProgramChange
        fields = ["at", "actor_label", "action", "changes"]


def _programs(request: Request, *, write: bool = False) -> QuerySet[UtilityProgram]:
    """The programs this request reaches: the user's (``write``: those they may change), narrowed to an API key's."""
    return key_narrowed(programs_for(request.user, write=write), request.auth)


def _invalid(exc: ProgramInvalid) -> ValidationError:
    return ValidationError({exc.field: [exc.message]})


class ProgramList(generics.ListAPIView):
    """``GET`` the caller's programs with their connection status; ``POST`` a new one (bidding admins, operators)."""

    serializer_class = ProgramSerializer
    permission_classes = [ProgramReader]

    def get_queryset(self) -> QuerySet[UtilityProgram]:
        return _programs(self.request).order_by("id")

    @extend_schema(request=ProgramSerializer, responses={201: ProgramSerializer})
    def post(self, request: Request) -> Response:
        data = ProgramSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        organisation = fields.pop("organisation")
        if not organisations_for(request.user, roles=WRITE_ROLES).filter(pk=organisation.pk).exists():
            raise PermissionDenied("enrolling an organisation's portfolio needs its bidding admin or an operator")
        try:
            program = utility_program_create(organisation=organisation, user=request.user, **fields)
        except ProgramInvalid as exc:
            raise _invalid(exc) from exc
        return Response(ProgramSerializer(program).data, status=status.HTTP_201_CREATED)


class ProgramDetail(APIView):
    """``GET`` one program (status included); ``PATCH`` its configuration (audited)."""

    permission_classes = [ProgramReader]

    def _program(self, request: Request, pk: int) -> UtilityProgram:
        return get_object_or_404(_programs(request), pk=pk)

    @extend_schema(responses={200: ProgramSerializer})
    def get(self, request: Request, pk: int) -> Response:
        program = self._program(request, pk)
        body = ProgramSerializer(program).data
        body["changes"] = ChangeSerializer(program.changes.all(), many=True).data
        return Response(body)

    @extend_schema(request=ProgramSerializer, responses={200: ProgramSerializer})
    def patch(self, request: Request, pk: int) -> Response:
        program = self._program(request, pk)
        if not _programs(request, write=True).filter(pk=program.pk).exists():
            raise PermissionDenied("changing a program needs the organisation's bidding admin or an operator")
        data = ProgramSerializer(program, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        if "organisation" in fields and fields.pop("organisation") != program.organisation:
            raise ValidationError({"organisation": ["a program stays with its organisation"]})
        try:
            program = utility_program_update(program=program, user=request.user, **fields)
        except ProgramInvalid as exc:
            raise _invalid(exc) from exc
        return Response(ProgramSerializer(program).data)


class _ProgramRows(generics.ListAPIView):
    permission_classes = [ProgramReader]

    def program(self) -> UtilityProgram:
        return get_object_or_404(_programs(self.request), pk=self.kwargs["pk"])


class ProgramEvents(_ProgramRows):
    """``GET`` a program's events as received, newest first (``?status=``)."""

    serializer_class = EventSerializer

    def get_queryset(self) -> QuerySet[UtilityEvent]:
        rows = self.program().events.all()
        if wanted := self.request.query_params.get("status"):
            rows = rows.filter(status=wanted)
        return rows


class ProgramReports(_ProgramRows):
    """``GET`` the reports sent for a program, newest first (``?kind=``)."""

    serializer_class = ReportSerializer

    def get_queryset(self) -> QuerySet[UtilityReport]:
        rows = self.program().reports.all()
        if wanted := self.request.query_params.get("kind"):
            rows = rows.filter(kind=wanted)
        return rows
