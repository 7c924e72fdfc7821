from __future__ import annotations

import importlib

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView


def _app_urls(suffix: str) -> list[URLPattern | URLResolver]:
    """Each app may ship ``urls`` (pages) and ``api_urls`` (REST); include those that exist."""
    found: list[URLPattern | URLResolver] = []
    for label in ("vpp", "chargers", "fleet", "markets"):
        module_name = f"{label}.{suffix}"
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        found.append(path("", include(module_name)))
    return found


urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(_app_urls("api_urls"))),
    path("", include(_app_urls("pages"))),
]
