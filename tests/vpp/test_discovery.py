"""Each app's optional modules are found one way: URLs, WebSocket routes and the beat schedule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vpp.celery import app as celery_app
from vpp.discovery import app_modules


def test_it_finds_the_modules_apps_ship_and_skips_the_absent() -> None:
    # when the routing and tasks modules are collected, then those that exist come in app order
    assert [m.__name__ for m in app_modules("routing")] == ["vpp.routing", "chargers.routing"]
    assert [m.__name__ for m in app_modules("tasks")] == ["chargers.tasks", "fleet.tasks", "markets.tasks"]
    assert app_modules("no_such_module") == []


def test_an_import_error_inside_an_app_module_is_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given an app whose tasks module exists but imports something missing
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("vpp.discovery.PROJECT_APPS", ("fleet_probe_broken_pkg",))
    pkg = tmp_path / "fleet_probe_broken_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text("import not_installed_anywhere\n")
    # when it is collected, then the real error surfaces instead of the module being skipped
    with pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"):
        app_modules("tasks")
    sys.modules.pop("fleet_probe_broken_pkg", None)


def test_every_apps_beat_schedule_and_websocket_route_is_wired() -> None:
    from vpp.asgi import _websocket_patterns

    # the beat schedule merges each tasks module's BEAT_SCHEDULE
    celery_app.finalize()
    assert {"chargers-heartbeat-sweep", "markets-prepare-proposals", "markets-regulation-settle"} <= set(
        celery_app.conf.beat_schedule
    )
    # and the WebSocket router serves the stations' routes as device routes (no session) and the dashboard's
    devices = {str(p.pattern) for p in _websocket_patterns("device_websocket_urlpatterns")}
    browsers = {str(p.pattern) for p in _websocket_patterns("websocket_urlpatterns")}
    assert "^ocpp/(?P<station_id>[^/]{1,48})/?$" in devices
    assert {"ws/dashboard", "ws/regulation"} <= browsers
