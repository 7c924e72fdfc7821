"""``python -m vpp.serve --workers N``: several Daphne processes serve one port, and only on a shared layer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time

import psutil
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from chargers.models import Station
from tests.chargers.conftest import LiveServer, raw_station
from tests.chargers.factories import StationFactory
from tests.live import free_port, wait_listening


def test_it_refuses_several_workers_without_redis():
    # Given no REDIS_URL (the in-memory channel layer cannot cross processes)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    # When two workers are asked for
    done = subprocess.run(
        [sys.executable, "-m", "vpp.serve", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits with the reason, before binding anything
    assert done.returncode != 0
    assert "needs REDIS_URL" in done.stderr


@pytest.mark.skipif(not settings.REDIS_URL, reason="several workers share stations only through Redis")
async def test_two_workers_share_the_port_and_stop_together(transactional_db):
    # Given the server started with two workers on the test database
    port = free_port()
    db_name = str(settings.DATABASES["default"]["NAME"])
    argv = [sys.executable, "-m", "vpp.serve", str(port), db_name, "1", "--workers", "2"]
    server = await asyncio.to_thread(subprocess.Popen, argv)
    try:
        await asyncio.to_thread(wait_listening, server, port)
        # The parent binds the port before it starts the workers: on a loaded machine the second may come later.
        workers = await asyncio.to_thread(_children, server.pid, count=2, within=30.0)
        assert len(workers) == 2
        stations = [await sync_to_async(StationFactory.create)() for _ in range(16)]
        live = LiveServer(port, server)
        # When sixteen stations connect and each gets an answer
        async with contextlib.AsyncExitStack() as stack:
            for station in stations:
                cs = await stack.enter_async_context(raw_station(live, station.station_id))
                assert (await cs.rpc([2, "hb", "Heartbeat", {}]))[0] == 3
            # Then both workers hold stations (a channel name starts with its process's prefix)
            assert len(await sync_to_async(_holders)([s.pk for s in stations])) == 2
    finally:
        # And stopping the server stops both workers
        server.terminate()
        await asyncio.to_thread(server.wait, 20)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def _children(pid: int, *, count: int, within: float) -> list[psutil.Process]:
    """The process's children, once there are ``count`` of them (or whatever there are after ``within`` s)."""
    deadline = time.monotonic() + within
    children = psutil.Process(pid).children()
    while len(children) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        children = psutil.Process(pid).children()
    return children


def _holders(pks: list[int]) -> set[str]:
    names = Station.objects.filter(pk__in=pks).exclude(channel_name="").values_list("channel_name", flat=True)
    return {name.split("!")[0] for name in names}


def test_the_gc_pause_log_reports_a_collection_longer_than_its_threshold(caplog: pytest.LogCaptureFixture) -> None:
    import gc

    from vpp.serve import GcPauseLog

    # Given the pause log with a threshold every collection exceeds, and one no collection reaches
    every, none = GcPauseLog(0.0), GcPauseLog(3600.0)
    gc.callbacks.extend([every, none])
    try:
        # When a full collection runs
        with caplog.at_level("WARNING", logger="vpp.serve"):
            gc.collect()
    finally:
        gc.callbacks.remove(every)
        gc.callbacks.remove(none)
    # Then exactly one line reports it, with its generation
    lines = [r.getMessage() for r in caplog.records if "cyclic GC paused" in r.getMessage()]
    assert len(lines) == 1
    assert "generation 2" in lines[0]


_REACTOR_LOOP = (
    "from vpp.serve import event_loop_install; chosen = event_loop_install(); import django; django.setup(); "
    "from twisted.internet import reactor; print(chosen, type(reactor._asyncioEventloop).__module__)"
)


@pytest.mark.parametrize(("setting", "loop_module"), [("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")])
def test_the_reactor_daphne_serves_on_runs_on_the_configured_event_loop(setting: str, loop_module: str) -> None:
    # Given SERVER_EVENT_LOOP set, in a fresh interpreter (the reactor is installed once per process)
    env = {**os.environ, "SERVER_EVENT_LOOP": setting, "DJANGO_SETTINGS_MODULE": "vpp.settings"}
    # When the server's start-up chooses the loop and Django is set up (which installs Daphne's reactor)
    done = subprocess.run([sys.executable, "-c", _REACTOR_LOOP], env=env, capture_output=True, text=True, timeout=60)
    # Then Twisted's reactor runs on that loop
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [setting, loop_module]


def test_autobahns_per_frame_debug_arguments_are_plain_text() -> None:
    import autobahn.twisted.websocket
    import autobahn.websocket.protocol

    from vpp.serve import autobahn_log_arguments_plain

    # Given autobahn as Daphne uses it (its debug lines' arguments are built for every frame, logged or not)
    modules = (autobahn.twisted.websocket, autobahn.websocket.protocol)
    saved = [(getattr(m, "hltype"), getattr(m, "hlval")) for m in modules]  # noqa: B009 - not in the stubs
    saved_pformat = autobahn.websocket.protocol.pformat
    try:
        # When the server replaces the helpers
        autobahn_log_arguments_plain()
        # Then a frame's debug arguments are the same text without click's colour codes
        for module in modules:
            hltype, hlval = getattr(module, "hltype"), getattr(module, "hlval")  # noqa: B009
            method = autobahn.twisted.websocket.WebSocketServerProtocol.sendMessage
            assert hltype(method) == "<autobahn.websocket.protocol.WebSocketProtocol.sendMessage>"
            assert hlval(42) == "42"
        assert autobahn.websocket.protocol.pformat([("failByDrop", False)]) == "[('failByDrop', False)]"
    finally:
        autobahn.websocket.protocol.pformat = saved_pformat
        for module, (hltype, hlval) in zip(modules, saved, strict=True):
            setattr(module, "hltype", hltype)  # noqa: B010
            setattr(module, "hlval", hlval)  # noqa: B010


def test_websocket_options_are_class_attributes_so_a_connection_does_not_copy_them() -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    from vpp.serve import options_as_class_attributes

    # Given a factory with options set as Daphne sets them, including a function-valued one
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(failByDrop=False, maxMessagePayloadSize=4096)
    # When the protocol class is made to carry them
    protocol_class = options_as_class_attributes(factory, WebSocketServerProtocol)
    connection = protocol_class()
    # Then a connection reads every option from its class (none in its own __dict__) with the factory's value
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        assert name not in vars(connection)
        assert getattr(connection, name) == getattr(factory, name)
    assert connection.failByDrop is False
    assert connection.maxMessagePayloadSize == 4096
    # and the function-valued option is still called with its one argument (not bound as a method)
    assert connection.perMessageCompressionAccept([]) is None


def test_a_serving_process_hands_its_held_fleet_readings_on_at_a_graceful_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the process's exit handlers recorded instead of installed
    import atexit

    from fleet.telemetry import held_readings_hand_on
    from vpp.serve import exit_hooks_install

    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    # When a serving process installs its exit hooks
    exit_hooks_install()
    # Then the fleet's ingest window is handed on when it exits
    assert held_readings_hand_on in registered
