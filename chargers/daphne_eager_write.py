"""Eager writes on Twisted's TCP connections: a frame goes to the socket when it is written, not a loop pass later.

Twisted's ``FileDescriptor.write`` only buffers. It registers the socket with the event loop as a writer
(``add_writer``: an ``epoll_ctl``), the next loop pass calls ``doWrite``, which sends the buffer and unregisters the
socket (``remove_writer``: another ``epoll_ctl``). A CSMS writes one small frame per connection per message, so each
frame paid two system calls, a loop callback and a dozen Python calls: ~20 % of the event loop's time in a
1,000-station dispatch fan-out (py-spy, ``bench/README.md``, "Eager writes").

asyncio's own transports try the socket first and buffer only what it does not take; this does the same for
Twisted's TCP connections (Daphne's, and through them the TLS layer's, which writes its records into them):

* only when nothing is buffered or being written (so the order of bytes is kept), the connection is open, not
  closing, aborted or half-closed, has no pull producer (it is asked for more from ``doWrite`` only), and TLS is not
  Twisted's built-in ``startTLS`` (its writes go through its own protocol);
* what the kernel does not take (a full socket buffer) is buffered the ordinary way and written by the reactor;
* an error (reset, broken pipe) is not handled here: the data is buffered the ordinary way, the reactor's
  ``doWrite`` meets the same error and loses the connection exactly as before.

Installed once per serving process by :mod:`vpp.serve` (``SERVER_EAGER_WRITE``, on by default).
"""

from __future__ import annotations

from typing import Any


def install() -> bool:
    """Patch ``twisted.internet.tcp.Connection.write``; returns False if it was already installed."""
    from twisted.internet import tcp

    if getattr(tcp.Connection, "_eager_write_installed", False):
        return False
    buffered = tcp.Connection.write  # the TLS mixin's write: startTLS's layer, else FileDescriptor.write

    def write(self: Any, data: bytes) -> None:
        if (
            type(data) is bytes
            and data
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnecting
            and not self._writeDisconnected
            and not self.TLS
            and not getattr(self, "_aborting", False)  # abortConnection drops what is written after it
            # A pull producer is asked for more only from the reactor's doWrite: leave its connection to it.
            and (self.producer is None or self.streamingProducer)
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            sent = self.writeSomeData(data)
            if isinstance(sent, int) and sent >= 0:
                if sent == len(data):
                    return
                data = data[sent:]
            # else: an error; buffered below, doWrite meets it and loses the connection as it always did
        buffered(self, data)

    tcp.Connection.write = write  # type: ignore[method-assign]
    tcp.Connection._eager_write_installed = True  # type: ignore[attr-defined]
    return True
