"""The API's description: every endpoint in the OpenAPI schema, and the docs pages served from this server."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

DESCRIPTION = {"api/schema/", "api/docs/", "api/redoc/", "api/"}  # the description itself, and DRF's index


def _routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            found |= _routes(p.url_patterns, route)
        elif "format" not in p.pattern.regex.groupindex:
            found.add(route)
    return found


def _as_openapi(route: str) -> str:
    """``api/^markets/bids/(?P<pk>[^/.]+)/edit/$`` or ``api/stations/<str:station_id>/call`` as an OpenAPI path."""
    route = route.replace("^", "").replace("$", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)
    route = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
    return "/" + route.replace("{pk}", "{id}")


@pytest.mark.django_db
def test_every_api_endpoint_is_in_the_schema() -> None:
    # Given the API routes the resolver serves
    routes = {_as_openapi(r) for r in _routes(get_resolver().url_patterns) if r.startswith("api/")}
    routes -= {_as_openapi(r) for r in DESCRIPTION}
    # When the schema is fetched
    response = Client().get("/api/schema/", {"format": "json"})
    # Then it describes each of them (the station call, an async function view, included)
    paths = set(response.json()["paths"])
    assert sorted(routes - paths) == []
    assert "/api/stations/{station_id}/call" in paths


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/docs/", "/api/docs/?script", "/api/redoc/"])
def test_the_api_docs_load_nothing_from_another_host(url: str) -> None:
    # Given no network beyond this server; when a docs page (or its start-up script) is fetched
    response = Client().get(url)
    # Then it names no other host, and the CSP lets it run from this origin alone
    assert response.status_code == 200
    assert not re.search(rb"(src|href)=\"https?://", response.content)
    assert "cdn" not in response.get("Content-Security-Policy", "")


@pytest.mark.parametrize(
    "path",
    [
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js",
    ],
)
def test_the_docs_scripts_are_static_files_of_this_server(path: str) -> None:
    # Given the pinned sidecar package; then the scripts the docs pages load are found among the static files
    assert finders.find(path)
