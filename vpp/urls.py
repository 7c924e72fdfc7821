from __future__ import annotations

from csp.decorators import csp_update
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from vpp.discovery import app_modules


def _app_urls(suffix: str) -> list[URLPattern | URLResolver]:
    """Each app may ship ``pages`` (HTML) and ``api_urls`` (REST); include those that exist."""
    return [path("", include(module)) for module in app_modules(suffix)]


# Swagger UI comes from its CDN (drf-spectacular's default): the docs page alone may load from there. The split view
# serves its start-up script as a file (``?script``), so no inline script needs the CSP nonce.
SWAGGER_CDN = "https://cdn.jsdelivr.net"
api_docs = csp_update({"script-src": [SWAGGER_CDN], "style-src": [SWAGGER_CDN], "img-src": [SWAGGER_CDN]})(
    SpectacularSwaggerSplitView.as_view(url_name="schema")
)

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", api_docs, name="api-docs"),
    path("api/", include(_app_urls("api_urls"))),
    path("", include(_app_urls("pages"))),
]
