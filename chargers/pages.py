"""Public PKI endpoints: the CRL relying parties (stations, proxies) fetch, ``GET /pki/crl`` (DER)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.http import require_GET

from chargers.pki import ca, issue


@require_GET
def pki_crl(request: HttpRequest) -> HttpResponse:
    # Public by design (RFC 5280 CRL distribution): it names serials, not stations, and is signed by the sub-CA.
    if not ca.ca_exists():
        return HttpResponse("no PKI here: run `manage.py pki init`", status=404, content_type="text/plain")
    response = HttpResponse(issue.crl_der(), content_type="application/pkix-crl")
    response["Cache-Control"] = "public, max-age=300"
    return response


urlpatterns = [path("pki/crl", pki_crl, name="pki-crl")]
