"""REST edge of peak shaving: ``POST /api/peak/sites/<code>/interval-data``, a depot's interval data (the utility's
15-minute import, or any interval of 1 to 60 minutes) as CSV or JSON.

Who: fleet managers of the site's organisation (another organisation's site: 404, as if it did not exist), operators
for any site; an API key needs scope ``fleet:write`` and, when it names an organisation, uploads to that one's sites
only. Every upload is audited (``SiteDataUpload``), refusals too. The body is judged all or nothing by
``markets.peak.services`` (a refusal names each bad line or JSON Pointer in the problem document's ``errors``).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ParseError
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.models import ApiKey, Role
from fleet.permissions import FleetWriteKeys
from fleet.problems import Problem, ProblemSerializer
from fleet.selectors import is_operator, organisations_for
from fleet.station_api import actor_label
from markets.models import DepotSite
from markets.peak.interval_data import MAX_UPLOAD_ERRORS, IntervalDataError
from markets.peak.models import MeterSource
from markets.peak.selectors import sites_for
from markets.peak.services import site_interval_data_receive

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a year of 5-min intervals as CSV is about 5 MB
UPLOADERS = (Role.FLEET_MANAGER,)


class _RawParser(BaseParser):
    """The body's bytes as sent (hashed for the audit, parsed by the service), at most ``MAX_UPLOAD_BYTES``."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> bytes:
        body = stream.read(MAX_UPLOAD_BYTES + 1) if stream is not None else b""
        if len(body) > MAX_UPLOAD_BYTES:
            raise Problem(status=413, detail=f"at most {MAX_UPLOAD_BYTES} bytes per upload", code="too_large")
        return bytes(body)


class CsvBodyParser(_RawParser):
    media_type = "text/csv"


class JsonBodyParser(_RawParser):
    media_type = "application/json"


class SiteUploader(FleetWriteKeys):
    """A fleet manager of some organisation, or an operator; an API key with scope ``fleet:write``."""

    message = "interval data is uploaded by the site's fleet managers or an operator"

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return super().has_permission(request, view) and (
            is_operator(user) or organisations_for(user, roles=UPLOADERS).exists()
        )


def upload_sites(request: Request) -> QuerySet[DepotSite]:
    """The sites this caller may upload to, narrowed to an API key's organisation."""
    key_org = request.auth.organisation_id if isinstance(request.auth, ApiKey) else None
    return sites_for(request.user, organisation_id=key_org, roles=UPLOADERS)


class ReadingSerializer(serializers.Serializer):
    interval_start = serializers.DateTimeField(help_text="ISO 8601 with UTC offset")
    interval_minutes = serializers.IntegerField(min_value=1, max_value=60)
    import_w = serializers.IntegerField(required=False, help_text="mean net import over the interval, W (export < 0)")
    import_kw = serializers.DecimalField(max_digits=15, decimal_places=3, required=False, help_text="or in kW")


class IntervalDataSerializer(serializers.Serializer):
    readings = ReadingSerializer(many=True)


class UploadFileSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="a .csv or .json file (as the bodies above)")


class UploadAnswerSerializer(serializers.Serializer):
    site = serializers.CharField()
    upload = serializers.IntegerField(help_text="the audit record (SiteDataUpload) id")
    source = serializers.ChoiceField(choices=[MeterSource.CSV, MeterSource.JSON])
    readings = serializers.IntegerField(help_text="intervals in the upload")
    created = serializers.IntegerField(help_text="new beliefs stored (a changed value is a new belief)")
    unchanged = serializers.IntegerField(help_text="intervals equal to what was already known: not stored again")
    sha256 = serializers.CharField()


CSV_EXAMPLE = (
    "interval_start,interval_minutes,import_kw\n"
    "2026-12-01T00:00:00-05:00,15,182.4\n"
    "2026-12-01T00:15:00-05:00,15,179.9\n"
)


class SiteIntervalDataView(APIView):
    """``POST /api/peak/sites/<code>/interval-data``: the depot's metered import per interval (CSV or JSON)."""

    permission_classes = [SiteUploader]
    parser_classes = [CsvBodyParser, JsonBodyParser, MultiPartParser]

    @extend_schema(
        operation_id="peak_site_interval_data_upload",
        request={
            "text/csv": OpenApiTypes.STR,
            "application/json": IntervalDataSerializer,
            "multipart/form-data": UploadFileSerializer,
        },
        responses={
            201: UploadAnswerSerializer,
            200: OpenApiResponse(UploadAnswerSerializer, description="nothing new: every interval already known"),
            400: OpenApiResponse(ProblemSerializer, description="refused, nothing stored; errors: line or pointer"),
            **dict.fromkeys((401, 403, 404, 413, 415), ProblemSerializer),
        },
        examples=[OpenApiExample("CSV", value=CSV_EXAMPLE, media_type="text/csv", request_only=True)],
        description=(
            "CSV header `interval_start,interval_minutes,import_w` (or `import_kw`), ISO 8601 with offset; JSON "
            '`{"readings": [{"interval_start", "interval_minutes", "import_w" | "import_kw"}]}`; or either as a '
            "multipart `file`. All or nothing; a re-upload stores nothing new; a changed value is a new belief."
        ),
    )
    def post(self, request: Request, site: str) -> Response:
        found = upload_sites(request).filter(code=site).first()
        if found is None:
            raise NotFound(f"no depot site {site!r}")
        body, source, filename = self._body(request)
        try:
            upload, result = site_interval_data_receive(
                site=found,
                body=body,
                source=source,
                filename=filename,
                actor_user_id=request.user.pk,
                actor_label=actor_label(request.user, request.auth),
            )
        except IntervalDataError as exc:
            raise Problem(
                status=400,
                detail=f"interval data refused, nothing stored: {exc}",
                code="invalid",
                errors=[_error(where, what) for where, what in exc.errors[:MAX_UPLOAD_ERRORS]],
            ) from exc
        answer = {
            "site": found.code,
            "upload": upload.pk,
            "source": source,
            "readings": result.read,
            "created": result.created,
            "unchanged": result.unchanged,
            "sha256": upload.sha256,
        }
        return Response(answer, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)

    @staticmethod
    def _body(request: Request) -> tuple[bytes, str, str]:
        data = request.data  # 415 for another media type (DRF), 413 beyond MAX_UPLOAD_BYTES
        if isinstance(data, bytes):
            media = (request.content_type or "").split(";")[0].strip().lower()
            source = MeterSource.JSON if media == "application/json" else MeterSource.CSV
            return data, source, str(request.query_params.get("filename", ""))
        upload = request.FILES.get("file")
        if upload is None:
            raise ParseError("send the interval data as the body (text/csv, application/json) or a multipart 'file'")
        if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
            raise Problem(status=413, detail=f"at most {MAX_UPLOAD_BYTES} bytes per upload", code="too_large")
        name = str(upload.name or "")
        source = MeterSource.JSON if name.lower().endswith(".json") else MeterSource.CSV
        return upload.read(), source, name


def _error(where: str, what: str) -> dict[str, Any]:
    """An ``errors`` member: a JSON Pointer into a JSON body, the line number of a CSV one."""
    if where.startswith("line "):
        return {"detail": what, "line": int(where.removeprefix("line "))}
    return {"detail": what, "pointer": where}
