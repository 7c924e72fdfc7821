"""Josev's EXI codec (EXIficient, in a Java VM reached through py4j), warmed up and watched.

Why a wrapper: Josev's IEXICodec is its one pluggable seam between the wire and its state machines. Every message
passes through it as JSON, so the agent sees what Josev does not hand its controller (the car's DisplayParameters:
its SoC), and times each request against its response on the same clock that the socket uses.

The Java codec is slow on its first messages in each schema (grammar loading, JIT): a cold SessionSetupRes can take
over a second, beyond the car's 2 s message timeout on a busy machine. ``warm_up`` encodes and decodes the session's
messages before the first car arrives.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from iso15118.shared.exificient_exi_codec import ExificientEXICodec
from iso15118.shared.iexi_codec import IEXICodec

LOG = logging.getLogger("edge_agent.secc")

# Seen(name, body, monotonic time): ``name`` is the message's element name (PowerDeliveryReq, ACChargeLoopRes, ...).
Watcher = Callable[[str, dict[str, Any], float], None]


def _message(text: str) -> tuple[str, dict[str, Any]] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or len(doc) != 1:
        return None
    ((name, body),) = doc.items()
    return (name, body) if isinstance(body, dict) else None


class WatchedCodec(IEXICodec):
    """EXIficient, with ``on_encoded``/``on_decoded`` called for every ISO 15118 message that passes."""

    def __init__(self, inner: IEXICodec | None = None) -> None:
        self.inner = inner or ExificientEXICodec()
        self.on_encoded: list[Watcher] = []
        self.on_decoded: list[Watcher] = []

    def encode(self, message: str, namespace: str) -> bytes:
        data: bytes = self.inner.encode(message, namespace)
        if self.on_encoded:
            self._tell(self.on_encoded, message)
        return data

    def decode(self, stream: bytes, namespace: str) -> str:
        text: str = self.inner.decode(stream, namespace)
        if self.on_decoded:
            self._tell(self.on_decoded, text)
        return text

    def get_version(self) -> str:
        return str(self.inner.get_version())

    @staticmethod
    def _tell(watchers: list[Watcher], text: str) -> None:
        at = time.monotonic()
        parsed = _message(text)
        if parsed is None:
            return
        for watch in watchers:
            try:
                watch(parsed[0], parsed[1], at)
            except Exception:  # a watcher's bug must not break the session with the car
                LOG.exception("codec watcher failed on %s", parsed[0])

    def warm_up(self, rounds: int = 3) -> float:
        """Encode and decode every sample message ``rounds`` times; returns the seconds it took."""
        samples = json.loads(resources.files("edge_agent.secc").joinpath("warmup.json").read_text())
        began = time.monotonic()
        for _ in range(rounds):
            for namespace, text in samples:
                self.inner.decode(self.inner.encode(text, namespace), namespace)
        return time.monotonic() - began
