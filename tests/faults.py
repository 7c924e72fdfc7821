"""Fault injection for tests and the fault drill: a TCP proxy the test controls, and a Redis it may kill.

:class:`PausableTcpProxy` sits between a client (Django, a channel layer, Celery) and a server (PostgreSQL, Redis)
and, on the test's word, stops forwarding while holding every connection open (a server that accepts TCP but
answers nothing: paused, overloaded, or behind a stalled network), resumes, or cuts every connection (a server
that vanished). It runs its own event loop on its own thread, so sync and async tests drive it alike.

:class:`RedisProcess` is a throw-away ``redis-server`` without persistence on a free port, to stop and start
again on the same port (a restart that forgets every key and group membership, as a real one without persistence).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from typing import Self

from tests.live import free_port


class PausableTcpProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host``:``upstream_port`` until told otherwise.

    ``pause()``: stop forwarding in both directions; connections (new ones too) are accepted and held, their data
    kept. ``resume()``: forward again, the held data first. ``cut()``: abort every open connection (both sides); new
    connections are still accepted. Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.Task[None]] = set()  # one per proxied connection

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def pause(self) -> None:
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        self._call(self._set_flowing(True))

    def cut(self) -> None:
        self._call(self._cut())

    # --- on the proxy's loop ----------------------------------------------------------------------------------

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", free_port())
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        if self._links:
            await asyncio.wait(set(self._links), timeout=2)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for link in list(self._links):  # a pipe held by pause() would otherwise wait on
            link.cancel()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        link = asyncio.current_task()
        assert link is not None
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, client_writer),
                self._pipe(upstream_reader, client_writer, upstream_writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:  # cut(): this connection is gone, the proxy goes on
            pass
        finally:
            self._links.discard(link)
            self._writers -= {client_writer, upstream_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter):
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # paused: hold the data (and the connection) until resumed or cut
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            other.transport.abort()


class RedisProcess:
    """``redis-server`` on a free port with persistence off; ``stop()`` kills it, ``start()`` brings it back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        self._process = None
