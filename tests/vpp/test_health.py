"""``/healthz``, the load balancer's health check: 200 while the database and the channel layer answer, 503 when one
does not, and nothing but "ok"/"down" in either answer."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings

from tests.chargers.conftest import start_server, stop_server
from tests.faults import PausableTcpProxy
from tests.live import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def _get(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_it_answers_200_with_each_dependency_ok_and_nothing_else() -> None:
    # when an anonymous client asks
    response = Client().get("/healthz")
    # then both dependencies are reported up, and the answer names nothing but them
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_it_refuses_writes() -> None:
    assert Client().post("/healthz").status_code == 405


def test_it_answers_503_when_the_channel_layer_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    # given a Redis channel layer on a port where nothing listens
    dead = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    with override_settings(CHANNEL_LAYERS=dead):
        # when the balancer asks
        response = Client().get("/healthz")
    # then the node is reported down, with which dependency but not why (the log says why)
    assert response.status_code == 503
    assert response.json() == {"status": "down", "database": "ok", "channel_layer": "down"}
    assert "127.0.0.1" not in response.content.decode()
    assert any("channel layer (health check) unreachable" in r.getMessage() for r in caplog.records)


@pytest.mark.live
def test_it_answers_503_while_the_database_hangs_and_200_again_once_it_answers(tmp_path: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("pauses PostgreSQL through a TCP proxy (DATABASE_URL=postgres://...)")
    db = settings.DATABASES["default"]
    with PausableTcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)) as proxy:
        # given a server reaching its database through a proxy
        url = f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}"
        server = start_server({"DATABASE_URL": url, "VPP_VAR_DIR": str(tmp_path)}, log_path=tmp_path / "csms.log")
        try:
            health = f"{server.http_url}/healthz"
            assert _get(health)[:2] == (200, {"status": "ok", "database": "ok", "channel_layer": "ok"})
            # when the database accepts TCP but answers nothing
            proxy.pause()
            started = time.monotonic()
            status, body, _ = _get(health)
            # then the node is down within the check's timeout, and stays down (no check piles up behind the hung one)
            assert (status, body["database"]) == (503, "down")
            assert time.monotonic() - started < 5
            assert _get(health)[0] == 503
            # and once the database answers again, it is healthy again without a restart
            proxy.resume()
            deadline = time.monotonic() + 15
            while _get(health)[0] != 200:
                assert time.monotonic() < deadline, "still down 15 s after the database came back"
                time.sleep(0.5)
        finally:
            proxy.resume()
            stop_server(server)
