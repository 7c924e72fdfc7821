"""Serve the project's ASGI app with Daphne: ``python -m vpp.serve PORT [DB_NAME [VERBOSITY]] [--workers N]
[--tls-port P]``.

Used by ``runvpp`` (``make run``), ``regulation replay``, the live-server tests and the benchmarks: the same
settings everywhere. ``DB_NAME`` overrides the database name only (a test database, under pytest); ``VERBOSITY`` is
Daphne's ``-v`` (default 0, 1 adds the access log).

``--workers N`` (N > 1) runs N Daphne processes on one port: this process binds one ``SO_REUSEPORT`` socket per
worker and each worker serves the one it inherits (Daphne's ``fd:`` endpoint); the kernel spreads new connections
over them, so all of a machine's cores serve chargers. It is the same scale-out as more Daphne nodes, so it needs
what they need: the Redis channel layer (``REDIS_URL``), through which a command or a dispatch reaches whichever
process holds the station's socket. If a worker dies, the others are stopped and this process exits with its
status, for the supervisor to restart the lot.

``--tls-port P`` also serves the app over TLS on P (wss:// for OCPP security profiles 2 and 3; see
``chargers.daphne_tls``): certificate and key from ``TLS_CERT_FILE``/``TLS_KEY_FILE``, else a server certificate
issued from the built-in PKI into ``PKI_DIR`` (the CA is created on first use); client certificates are verified
against ``TLS_CLIENT_CA_FILE``, else the built-in CA bundle. With ``--workers`` each worker inherits one socket of
each port.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

#: How every Daphne of this project runs (``make run``, the live tests, replays and benchmarks). Charger WebSockets
#: live for months, so no 24-h cut-off; a 60-s handshake timeout lets a reconnect wave of thousands of chargers
#: queue instead of being refused at 5 s and all retrying at once.
LOG = logging.getLogger("vpp.serve")  # also when run as __main__
DAPHNE_OPTIONS = ("--websocket_timeout", "-1", "--websocket_connect_timeout", "60")
#: Listen backlog: Twisted's default of 50 drops SYNs when a thousand chargers reconnect at once.
BACKLOG = 2048
APPLICATION = "vpp.asgi:application"
#: Each worker of ``--workers N`` is told its index (0 ... N-1): what runs once per server (the utility programs'
#: clients with ``UTILITY_IN_SERVER``) runs in worker 0 only. A worker that dies stops the whole server, so there is
#: never a server without its worker 0.
WORKER_ENV = "VPP_SERVE_WORKER"
CLOSE_HANDSHAKE_TIMEOUT_S = 5  # autobahn's default is 1 s: see _close_failed_sockets_cleanly


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vpp.serve", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("db_name", nargs="?", default="", help="database name override (tests)")
    parser.add_argument("verbosity", nargs="?", default="0", help="Daphne's -v")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1, help="Daphne processes on one socket (needs REDIS_URL)")
    parser.add_argument("--tls-port", type=int, default=None, help="also serve over TLS (wss://) on this port")
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker: the inherited socket
    parser.add_argument("--tls-fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker: its TLS socket
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers > 1:
        _require_shared_layer()
        if args.tls_port:
            _django_setup(args)
            tls_files(args.host)  # issue the embedded default's certificate once, before the workers read it
        sys.exit(serve_workers(args))
    _serve_one(args)


def _require_shared_layer() -> None:
    if not os.environ.get("REDIS_URL"):
        sys.exit(
            "vpp.serve: --workers > 1 needs REDIS_URL: with the in-memory channel layer a worker cannot reach a "
            "station connected to another worker"
        )


def _django_setup(args: argparse.Namespace) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
    from django.conf import settings

    if args.db_name:
        settings.DATABASES["default"]["NAME"] = args.db_name
    import django

    django.setup()


def tls_files(host: str) -> tuple[str, str, str]:
    """(certificate, key, client CA bundle) for the TLS listener: configured files, else the built-in PKI's."""
    from django.conf import settings

    from chargers.pki import ca, issue

    if not settings.TLS_CLIENT_CA_FILE and not ca.ca_exists():
        ca.ca_init()
    ca_file = settings.TLS_CLIENT_CA_FILE or ca.bundle_path()
    if settings.TLS_CERT_FILE and settings.TLS_KEY_FILE:
        return settings.TLS_CERT_FILE, settings.TLS_KEY_FILE, ca_file
    wildcard = host in ("", "0.0.0.0", "::")  # noqa: S104 - recognising a wildcard bind, not making one
    hosts = list(dict.fromkeys([socket.gethostname() if wildcard else host, "localhost"]))
    cert_file, key_file = issue.server_credentials_ensure(hosts=hosts)
    return cert_file, key_file, ca_file


def _serve_one(args: argparse.Namespace) -> None:
    event_loop_install()
    _django_setup(args)
    from django.conf import settings

    _tune_gc(log_pauses_ms=settings.GC_PAUSE_LOG_MS)
    from daphne.cli import CommandLineInterface

    _close_failed_sockets_cleanly()
    autobahn_log_arguments_plain()
    exit_hooks_install()
    if settings.SERVER_EAGER_WRITE:
        from chargers import daphne_eager_write

        daphne_eager_write.install()

    if args.fd is not None:
        endpoint = f"fd:fileno={args.fd}"  # Daphne's own fd parser; AF_INET by default
    else:
        endpoint = f"tcp:port={args.port}:interface={args.host}:backlog={BACKLOG}"
    endpoints = ["-e", endpoint]
    if args.tls_port or args.tls_fd is not None:
        from chargers import daphne_tls

        cert_file, key_file, ca_file = tls_files(args.host)
        daphne_tls.install(cert_file=cert_file, key_file=key_file, ca_file=ca_file)
        if args.tls_fd is not None:
            endpoints += ["-e", f"{daphne_tls.PREFIX}fileno={args.tls_fd}"]
        else:
            endpoints += ["-e", f"{daphne_tls.PREFIX}port={args.tls_port}:interface={args.host}:backlog={BACKLOG}"]
    options = [*DAPHNE_OPTIONS, *message_size_options(settings.OCPP_MAX_MESSAGE_BYTES)]
    CommandLineInterface().run([*endpoints, *options, "-v", args.verbosity, APPLICATION])


def event_loop_install() -> str:
    """Make the loop Daphne builds its Twisted reactor on a uvloop loop (``SERVER_EVENT_LOOP``, default uvloop).

    Daphne creates that loop with ``asyncio.new_event_loop()`` and installs Twisted's asyncio reactor on it when
    ``daphne.server`` is first imported, which ``django.setup()`` does (the ``daphne`` app): so the event loop
    policy is set here, before Django is set up. Every frame's reads, writes, timers and futures run on this loop;
    uvloop does in C what asyncio's selector loop does in Python. Returns the loop's name; once a reactor is
    installed it is too late, and the standard loop stays (logged).
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
    from django.conf import settings  # settings only: no app (and no reactor) is loaded by reading them

    if settings.SERVER_EVENT_LOOP != "uvloop":
        return "asyncio"
    if "twisted.internet.reactor" in sys.modules:
        LOG.warning("SERVER_EVENT_LOOP=uvloop: a Twisted reactor is already installed; serving on asyncio's loop")
        return "asyncio"
    import asyncio

    import uvloop

    # EventLoopPolicy is deprecated from Python 3.12 and goes in 3.16 (the project pins 3.11): Daphne calls
    # asyncio.new_event_loop() itself, and a policy is the one way to choose what that returns.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def exit_hooks_install() -> None:
    """What a serving process does when it exits gracefully (SIGTERM, SIGINT: Daphne stops its reactor and returns):
    the fleet's ingest window hands its held readings to the broker (bounded wait, ``fleet.telemetry``)."""
    import atexit

    from fleet.telemetry import held_readings_hand_on

    atexit.register(held_readings_hand_on)


def _close_failed_sockets_cleanly() -> None:
    """Daphne's WebSocket factory, subclassed before its server is built (Daphne exposes no option for either):

    - autobahn sends a close frame with its reason (e.g. 1009, message too big) before dropping a connection it
      fails, instead of only dropping the TCP connection (its default, ``failByDrop``): the station then learns
      why (OCPP-J: a close with a reason) and our consumer sees the code;
    - the closing handshake may take ``CLOSE_HANDSHAKE_TIMEOUT_S``, not autobahn's 1 s: a station still writing the
      rest of an oversized message must finish it before it can answer our close, and a socket closed with its
      bytes unread goes out as a TCP reset, which can take our close frame (and its reason) with it;
    - the protocol options are attributes of the protocol class, not of every connection: autobahn copies each of
      its ~30 options from the factory into a new connection's ``__dict__`` unless its class already has it
      (``WebSocketProtocol._connectionMade``), which costs every idle connection a larger instance dict.
    """
    import daphne.server
    from daphne.ws_protocol import WebSocketFactory

    class ClosingWebSocketFactory(WebSocketFactory):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT_S)

        def setProtocolOptions(self, **options: object) -> None:
            super().setProtocolOptions(**options)
            self.protocol = options_as_class_attributes(self, WebSocketFactory.protocol)

    daphne.server.WebSocketFactory = ClosingWebSocketFactory


def options_as_class_attributes(factory: Any, protocol: type[Any]) -> type[Any]:
    """A subclass of ``protocol`` whose class attributes are the factory's current protocol options.

    A function-valued option (``perMessageCompressionAccept``) stays a plain function, not a method of the class.
    """
    options = {name: getattr(factory, name) for name in protocol.CONFIG_ATTRS}
    plain = {name: staticmethod(v) if isinstance(v, types.FunctionType) else v for name, v in options.items()}
    return type(protocol.__name__, (protocol,), plain)


def autobahn_log_arguments_plain() -> None:
    """Format the arguments of autobahn's debug lines without colour, on the path every frame takes.

    autobahn builds its debug lines' arguments even when debug logging is off, and colours them with ``click``
    (``autobahn.util.hltype``/``hlval``): about 6 us per frame received and again per frame sent, ~4 % of the
    CSMS's CPU per message under load (py-spy). The two helpers are replaced, in the two modules a frame passes
    through, by plain formatting of the same text; with autobahn debug logging on, its lines read the same, uncoloured.
    """
    import autobahn.twisted.websocket
    import autobahn.websocket.protocol

    for module in (autobahn.twisted.websocket, autobahn.websocket.protocol):
        module.hltype = _plain_type  # type: ignore[attr-defined]
        module.hlval = str  # type: ignore[attr-defined]
    # Every new connection pretty-prints its ~30 options for a debug line: 9 % of the server's CPU while a
    # thousand stations connect. repr() gives the same content on one line.
    autobahn.websocket.protocol.pformat = repr  # type: ignore[assignment]


def _plain_type(obj: object) -> str:
    return f"<{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}>"


def message_size_options(limit: int) -> list[str]:
    """Daphne's (autobahn's) own limit: a longer WebSocket message or frame fails the connection with 1009 while it
    is still arriving, so it never sits in memory whole (OCPP_MAX_MESSAGE_BYTES; Daphne's default is 1 MiB)."""
    return ["--websocket-max-message-size", str(limit), "--websocket-max-frame-size", str(limit)]


def _tune_gc(*, log_pauses_ms: float = 0.0) -> None:
    """Fewer, cheaper cyclic-GC passes for a server whose heap is mostly long-lived connection state.

    With Python's default thresholds (700, 10, 10) a thousand connected stations make the collector walk every
    connection's objects several times a second, and each older-generation pass stalls the event loop for tens
    to hundreds of milliseconds: measured, it was the whole of the CSMS's p99 above 50 ms at 1,000 msg/s. The
    code and settings loaded at start-up are frozen out of collection; young garbage is still collected, just in
    larger batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    if log_pauses_ms > 0:
        gc.callbacks.append(GcPauseLog(log_pauses_ms / 1000.0))


class GcPauseLog:
    """A ``gc.callbacks`` hook: logs each collection that held the process longer than ``threshold_s``."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        paused = time.perf_counter() - self._started
        if paused >= self.threshold_s:
            LOG.warning(
                "cyclic GC paused the server %.1f ms (generation %d, %d collected)",
                paused * 1000, info["generation"], info["collected"],
            )  # fmt: skip


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket that shares its port with its siblings; the kernel balances connections across them
    (one accept queue each, so no worker wakes for a connection another takes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def worker_argv(args: argparse.Namespace, fd: int, tls_fd: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "vpp.serve", str(args.port), args.db_name, args.verbosity, "--fd", str(fd)]
    return argv if tls_fd is None else [*argv, "--tls-fd", str(tls_fd)]


def serve_workers(args: argparse.Namespace) -> int:
    """Bind the port(s), start ``args.workers`` Daphne workers on them, stop them all on a signal or a death."""
    sockets = [listening_socket(args.host, args.port) for _ in range(args.workers)]
    tls_sockets = [listening_socket(args.host, args.tls_port) for _ in range(args.workers)] if args.tls_port else []
    workers = []
    for i, sock in enumerate(sockets):
        tls_sock = tls_sockets[i] if tls_sockets else None
        fds = (sock.fileno(),) if tls_sock is None else (sock.fileno(), tls_sock.fileno())
        argv = worker_argv(args, sock.fileno(), None if tls_sock is None else tls_sock.fileno())
        env = {**os.environ, WORKER_ENV: str(i)}
        workers.append(subprocess.Popen(argv, pass_fds=fds, env=env))  # noqa: S603
    for sock in [*sockets, *tls_sockets]:
        sock.close()  # each worker holds its own now
    stopping = {"signal": 0}

    def _on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    status = 0
    while not stopping["signal"]:
        exited = [w for w in workers if w.poll() is not None]
        if exited:
            status = exited[0].returncode or 1
            print(f"vpp.serve: worker {exited[0].pid} exited with {exited[0].returncode}; stopping", file=sys.stderr)
            break
        time.sleep(0.2)
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
    return status


if __name__ == "__main__":
    main()
