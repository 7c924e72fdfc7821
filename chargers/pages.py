"""Public PKI endpoints for relying parties (stations, proxies, anyone holding one of our certificates): the CRL,
``GET /pki/crl`` (DER), and the OCSP responder, ``POST /pki/ocsp`` (application/ocsp-request) and
``GET /pki/ocsp/<base64 request>`` (RFC 6960 A.1)."""

from __future__ import annotations

import base64
import binascii

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from chargers.pki import ca, issue, ocsp


@require_GET
def pki_crl(request: HttpRequest) -> HttpResponse:
    # Public by design (RFC 5280 CRL distribution): it names serials, not stations, and is signed by the sub-CA.
    if not ca.ca_exists():
        return HttpResponse("no PKI here: run `manage.py pki init`", status=404, content_type="text/plain")
    response = HttpResponse(issue.crl_der(), content_type="application/pkix-crl")
    response["Cache-Control"] = "public, max-age=300"
    return response


def _request_der(request: HttpRequest, encoded: str | None) -> bytes:
    """The DER OCSPRequest of a GET (base64 in the path) or a POST (the body); b"" when there is none to read."""
    if encoded is not None:
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            return b""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return b""
    if not 0 < length <= ocsp.REQUEST_MAX_BYTES:
        return b""
    return request.read(length)


# Public by design (RFC 6960: relying parties are anonymous) and without CSRF (a POST from a client, not a browser
# form; it changes nothing). Every answer is an OCSPResponse with HTTP 200, errors included (RFC 6960 2.3). Fresh
# signatures draw on the client address's budget (behind a proxy, the address the proxy middleware establishes).
@csrf_exempt
@require_http_methods(["GET", "POST"])
def pki_ocsp(request: HttpRequest, encoded: str | None = None) -> HttpResponse:
    if (request.method == "GET") != (encoded is not None):
        return HttpResponse(status=405, headers={"Allow": "GET" if encoded is not None else "POST"})
    answer = ocsp.responder_answer(_request_der(request, encoded), client=request.META.get("REMOTE_ADDR") or "")
    response = HttpResponse(answer, content_type="application/ocsp-response")
    if encoded is not None:
        response["Cache-Control"] = f"public, max-age={int(ocsp.REBUILD_AFTER.total_seconds())}"
    return response


urlpatterns = [
    path("pki/crl", pki_crl, name="pki-crl"),
    path("pki/ocsp", pki_ocsp, name="pki-ocsp"),
    path("pki/ocsp/<path:encoded>", pki_ocsp, name="pki-ocsp-get"),
]
