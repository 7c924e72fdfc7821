"""Fixtures of the utility interface tests: the OpenADR 3 test VTN on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.live import free_port
from tests.vpp.utility.oadr3_vtn import Vtn3
from vpp.dispatch import dispatcher as dispatcher_module
from vpp.dispatch import services as dispatch_services
from vpp.dispatch.dispatcher import dispatchers_running
from vpp.dispatch.reserve import reserve_runs_stop

SECRET = "s3cret-for-tests"


@pytest.fixture
async def oadr3_vtn(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Vtn3]:
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    found = Vtn3(clients={"acme-ven": SECRET})
    found.add_program("acme-cbp", payloadDescriptors=[
        {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"},
    ])  # fmt: skip
    runner = web.AppRunner(found.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}"
    yield found
    await runner.cleanup()
    await reserve_runs_stop()


@pytest.fixture
async def no_dispatchers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """No dispatcher left from another test; those a test starts, and its reserve runs, stopped at its end."""
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    monkeypatch.setattr(dispatch_services, "_products", {})
    yield
    for running in dispatchers_running():
        await running.stop()
    await reserve_runs_stop()
