"""ASGI entry point: HTTP through Django, WebSockets through each app's routing module."""

from __future__ import annotations

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
# Static files (the dashboard's JS, plotly.js from the plotly package) are served by the app itself, the same way
# in every environment: one process to run, nothing production-only.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import URLPattern, URLResolver, re_path  # noqa: E402

from chargers.proxy import TrustedProxyMiddleware  # noqa: E402
from vpp.discovery import app_modules  # noqa: E402
from vpp.utility.runner import InServerClients  # noqa: E402


def _websocket_patterns(name: str) -> list[URLPattern | URLResolver]:
    return [pattern for module in app_modules("routing") for pattern in getattr(module, name, [])]


# Devices (OCPP stations) authenticate with HTTP Basic inside their own consumer: their routes come first and skip
# the session and user middleware, which would otherwise wrap every frame a station is sent (a thousand per
# regulation dispatch). Browser and API sockets (``websocket_urlpatterns``) use the Django session or a token.
# Stations are not Origin-checked: Origin is what a browser says about the page that opened a socket, and it guards
# against a page riding on the visitor's cookies. A station sends no cookies and proves itself by its password or
# certificate, and any non-browser client can write any Origin it likes. Cookie-authenticated routes are wrapped in
# Channels' AllowedHostsOriginValidator in their app's routing module (vpp.routing).
# TrustedProxyMiddleware, on HTTP and WebSockets alike: behind a TLS-terminating proxy, the client's TLS, certificate
# and address as the proxy saw them, believed only from OCPP_TRUSTED_PROXIES with the proxy's secret (chargers.proxy);
# from anyone else those headers are dropped unread.
# InServerClients: the utility programs' clients on this process's loop when UTILITY_IN_SERVER is set (runner).
application = InServerClients(
    ProtocolTypeRouter(
        {
            "http": TrustedProxyMiddleware(django_asgi_app),
            "websocket": TrustedProxyMiddleware(
                URLRouter(
                    [
                        *_websocket_patterns("device_websocket_urlpatterns"),
                        re_path(r"", AuthMiddlewareStack(URLRouter(_websocket_patterns("websocket_urlpatterns")))),
                    ]
                )
            ),
        }
    )
)
