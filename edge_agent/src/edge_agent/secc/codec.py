"""Josev's EXI codec (EXIficient, in a Java VM reached through py4j), warmed up and watched.

Why a wrapper: Josev's IEXICodec is its one pluggable seam between the wire and its state machines. Every message
passes through it as JSON, so the agent sees what Josev does not hand its controller (the car's DisplayParameters:
its SoC), and times each request against its response on the same clock that the socket uses.

The Java codec is slow on its first messages in each schema (grammar loading, JIT): a cold SessionSetupRes can take
over a second, beyond the car's 2 s message timeout on a busy machine. ``warm_up`` encodes and decodes the session's
messages before the first car arrives.

Josev's codec also builds a new JAXB context for every message (40-200 ms per ISO 15118-20 message here, most of
the 250 ms the car allows for an answer). ``CachedExiCodec`` runs the same Java code with the contexts kept
(``java/CachedJaxbEXICodec.java``, built by ``make exi-codec``), in the same kind of long-lived JVM.
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
from iso15118.shared.settings import JAR_FILE_PATH

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


CACHED_CODEC_JAR = resources.files("edge_agent.secc").joinpath("java/cached-jaxb-exi-codec.jar")


class CachedExiCodec(ExificientEXICodec):
    """Josev's EXIficient codec, through ``CachedJaxbEXICodec`` (its JAXB contexts built once, not per message)."""

    def __init__(self) -> None:  # Josev's __init__ with our class on the classpath: no super().__init__()
        from py4j.java_gateway import JavaGateway

        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        self.gateway = JavaGateway.launch_gateway(
            classpath=f"{JAR_FILE_PATH}:{CACHED_CODEC_JAR}",
            die_on_exit=True,
            javaopts=["--add-opens", "java.base/java.lang=ALL-UNNAMED"],
        )
        self.exi_codec = self.gateway.jvm.edge_agent.secc.CachedJaxbEXICodec()


def default_codec() -> IEXICodec:
    """The cached codec; Josev's own if its class cannot be loaded (a Josev whose jar changed: ``make exi-codec``)."""
    try:
        return CachedExiCodec()
    except Exception:
        LOG.exception("the cached EXI codec did not load: Josev's own (a new JAXB context per message, slower)")
        return ExificientEXICodec()


class WatchedCodec(IEXICodec):
    """EXIficient, with ``on_encoded``/``on_decoded`` called for every ISO 15118 message that passes."""

    def __init__(self, inner: IEXICodec | None = None) -> None:
        self.inner = inner or default_codec()
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
