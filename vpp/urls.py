from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from vpp.discovery import app_modules


def _app_urls(suffix: str) -> list[URLPattern | URLResolver]:
    """Each app may ship ``pages`` (HTML) and ``api_urls`` (REST); include those that exist."""
    return [path("", include(module)) for module in app_modules(suffix)]


urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(_app_urls("api_urls"))),
    path("", include(_app_urls("pages"))),
]
