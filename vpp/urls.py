from __future__ import annotations

from csp.constants import SELF
from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from vpp.discovery import app_modules
from vpp.health import healthz


def _app_urls(suffix: str) -> list[URLPattern | URLResolver]:
    """Each app may ship ``pages`` (HTML) and ``api_urls`` (REST); include those that exist."""
    return [path("", include(module)) for module in app_modules(suffix)]


class RedocView(SpectacularRedocView):
    """ReDoc from this server (drf-spectacular-sidecar), started by a script carrying the request's CSP nonce and
    without the web fonts drf-spectacular's own template fetches from a CDN."""

    template_name = "api/redoc.html"


# Swagger UI and ReDoc are static files of this server (drf-spectacular-sidecar): the docs work offline and under
# the site's CSP. The split view serves its start-up script as a file (``?script``), so no inline script is needed.
urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    # The load balancer's health check (deploy/haproxy-cluster.cfg): database and channel layer reachable, or 503.
    path("healthz", healthz, name="healthz"),
    # Everyone's sign-in (the admin's own login takes staff only): django-axes guards it like the admin's.
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    # ReDoc renders in a web worker it creates from a blob: URL.
    path(
        "api/redoc/",
        csp_update({"worker-src": [SELF, "blob:"]})(RedocView.as_view(url_name="schema")),
        name="api-redoc",
    ),
    path("api/", include(_app_urls("api_urls"))),
    path("", include(_app_urls("pages"))),
]

# Errors of /api/ URLs are RFC 9457 problem documents; pages keep Django's (vpp/problems.py).
handler400 = "vpp.problems.bad_request"
handler403 = "vpp.problems.permission_denied"
handler404 = "vpp.problems.page_not_found"
handler500 = "vpp.problems.server_error"
