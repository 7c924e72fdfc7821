"""Eager writes on Twisted TCP connections (chargers.daphne_eager_write), on a real reactor and a real socket pair.

The reactor is a fresh ``SelectReactor`` that is never installed or run: a test turns it by hand
(``doIteration``), so it can tell what was sent at ``write`` time from what the reactor sent later.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from twisted.internet import interfaces, protocol, tcp
from twisted.internet.selectreactor import SelectReactor
from zope.interface import implementer

from chargers import daphne_eager_write


class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: list[object] = []

    def connectionLost(self, reason: object = None) -> None:
        self.lost.append(reason)


@pytest.fixture
def eager() -> Iterator[None]:
    original = tcp.Connection.write
    daphne_eager_write.install()
    yield
    tcp.Connection.write = original  # type: ignore[method-assign]
    tcp.Connection._eager_write_installed = False  # type: ignore[attr-defined]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        peer = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Daphne's HTTP channel sets it
    return ours, peer


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Connection, socket.socket, SelectReactor, Recorder]]:
    ours, peer = tcp_pair()
    reactor = SelectReactor()
    recorder = Recorder()
    connection = tcp.Connection(ours, recorder, reactor)  # type: ignore[arg-type]
    connection.connected = 1
    recorder.makeConnection(connection)
    peer.settimeout(1.0)
    yield connection, peer, reactor, recorder
    for s in (ours, peer):
        s.close()


def turn(reactor: SelectReactor, times: int = 5) -> None:
    for _ in range(times):
        reactor.runUntilCurrent()  # timed calls (abortConnection's callLater(0))
        reactor.doIteration(0.01)


def received(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_frame_reaches_the_socket_at_write_with_no_writer_registered(eager: None, pair) -> None:
    # given an open connection with nothing buffered
    connection, peer, reactor, _ = pair
    # when a frame is written, and the reactor is not turned
    frame = b'[3,"id-1",{"status":"Accepted"}]'
    connection.write(frame)
    # then the peer has it already, and the loop was not asked to watch the socket
    assert received(peer, len(frame)) == frame
    assert connection not in reactor.getWriters()


def test_without_it_twisted_only_buffers_until_the_reactor_turns(pair) -> None:
    # the behaviour the patch changes (so the test above can fail): buffered, a writer registered
    connection, peer, reactor, _ = pair
    connection.write(b"frame")
    assert connection in reactor.getWriters()
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)
    peer.setblocking(True)
    turn(reactor)
    assert received(peer, 5) == b"frame"


def test_what_a_full_socket_does_not_take_is_buffered_and_sent_in_order(eager: None, pair) -> None:
    # given a peer that is not reading, and more bytes than the socket buffers hold
    connection, peer, reactor, _ = pair
    big = bytes(range(256)) * 40_000  # 10 MB
    # when they are written, then another frame
    connection.write(big)
    connection.write(b"after")
    # then the rest waits in Twisted's buffer with the writer registered
    assert connection in reactor.getWriters()
    # and once the peer reads, the reactor delivers everything, in order
    data = b""
    deadline = time.monotonic() + 30
    while len(data) < len(big) + 5 and time.monotonic() < deadline:
        turn(reactor, 1)
        peer.setblocking(False)
        try:
            while chunk := peer.recv(1 << 20):
                data += chunk
        except BlockingIOError:
            pass
    assert data == big + b"after"
    assert connection not in reactor.getWriters()


def test_a_write_after_the_peer_is_gone_loses_the_connection_the_ordinary_way(eager: None, pair) -> None:
    # given a peer that reset the connection
    connection, peer, reactor, recorder = pair
    peer.close()
    # when a frame is written
    connection.write(b"frame")
    connection.write(b"frame")
    # then nothing is raised at write; the reactor's doWrite meets the error and the protocol learns it
    turn(reactor)
    assert recorder.lost
    assert not connection.connected


def test_a_closing_connection_keeps_twisteds_buffered_path(eager: None, pair) -> None:
    # given a connection asked to close once its buffer is written
    connection, peer, reactor, _ = pair
    connection.write(b"first")
    connection.loseConnection()
    # when something is written while it closes
    connection.write(b"second")
    # then it goes through the reactor, after what was already queued
    turn(reactor)
    assert received(peer, 11) == b"firstsecond"


def test_installing_twice_patches_once(eager: None) -> None:
    assert daphne_eager_write.install() is False


@implementer(interfaces.IPullProducer)
class Chunks:
    """A pull producer (``registerProducer(..., streaming=False)``): writes one chunk each time it is asked."""

    def __init__(self, connection: tcp.Connection, chunks: list[bytes]) -> None:
        self.connection, self.chunks, self.asked = connection, chunks, 0

    def resumeProducing(self) -> None:
        self.asked += 1
        if self.chunks:
            self.connection.write(self.chunks.pop(0))
        else:
            self.connection.unregisterProducer()

    def stopProducing(self) -> None:
        self.chunks = []


def test_a_pull_producer_is_still_asked_for_every_chunk(eager: None, pair) -> None:
    # given a pull producer on the connection (it is asked for more by the reactor's doWrite only)
    connection, peer, reactor, _ = pair
    producer = Chunks(connection, [b"one", b"two", b"three"])
    connection.registerProducer(producer, False)
    # when the reactor turns
    turn(reactor, 20)
    # then every chunk was asked for and reached the peer, in order
    assert received(peer, 11) == b"onetwothree"


def test_nothing_written_after_an_abort_reaches_the_peer(eager: None, pair) -> None:
    # given a connection aborted in this loop pass (it is closed on the next one)
    connection, peer, reactor, _ = pair
    connection.abortConnection()
    # when something is written before the abort completes
    connection.write(b"after-abort")
    turn(reactor)
    # then the peer gets nothing but the end of the connection
    peer.settimeout(2.0)
    with contextlib.suppress(ConnectionResetError):  # a reset is the end too
        assert peer.recv(100) == b""
