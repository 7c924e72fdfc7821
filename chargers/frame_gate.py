"""The limits on what one station connection may send (issue 14): a maximum message size and a message rate.

``OCPP_MAX_MESSAGE_BYTES``: Daphne itself refuses a longer message while it arrives (``vpp.serve`` passes the
limit), closing with 1009 before it is held in memory whole; the consumer checks again for any other server.
``OCPP_MAX_MESSAGES_PER_S`` (bursts of ``OCPP_MESSAGE_BURST``): a token bucket per connection, so per station.
Each is logged and stored as a security event once per burst, not once per frame.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from chargers.limits import TokenBucket
from chargers.models import StationEventKind
from chargers.services.security_events import security_event_later

LOG = logging.getLogger("chargers.consumers")

CLOSE_TOO_BIG = 1009  # RFC 6455: a message too big to process
# OCPP-J (2.0.1 and 2.1) has no rate-limit error code: GenericError is "any other error", and the text says which.
RATE_LIMITED_CODE = "GenericError"
RATE_LIMITED_DESCRIPTION = "rate limit exceeded: send this message again later"


class FrameGate:
    def __init__(self, *, station_id: str, address: str) -> None:
        self.station_id = station_id
        self.address = address
        self.max_bytes = settings.OCPP_MAX_MESSAGE_BYTES
        self.rate = settings.OCPP_MAX_MESSAGES_PER_S
        self.bucket = TokenBucket(rate=self.rate, burst=settings.OCPP_MESSAGE_BURST, now=time.monotonic())
        self.refused = 0  # frames refused since the station last kept to its rate

    def too_big(self, text: str) -> bool:
        """True (logged, recorded) when ``text`` is over the limit: the caller closes with CLOSE_TOO_BIG."""
        if len(text) <= self.max_bytes:  # characters <= bytes: a text within the limit in bytes always passes
            return False
        LOG.warning("%s sent a %d-character message (limit %d bytes): closing with 1009", self.station_id,
                    len(text), self.max_bytes)  # fmt: skip
        self._event(f"message of {len(text)} characters over the {self.max_bytes}-byte limit: closed with 1009")
        return True

    def closed_too_big(self) -> None:
        """Daphne closed the socket with 1009 (a message over its limit, which the consumer never saw)."""
        LOG.warning("%s's connection closed by the server: a message over %d bytes (1009)", self.station_id,
                    self.max_bytes)  # fmt: skip
        self._event(f"a message over the {self.max_bytes}-byte limit: closed with 1009")

    def admit(self) -> bool:
        """Take one frame's token; False when the station is over its rate (the frame is refused)."""
        if self.bucket.take(time.monotonic()):
            if self.refused:
                LOG.info("%s is within its message rate again; %d frames were refused", self.station_id, self.refused)
                self.refused = 0
            return True
        self.refused += 1
        if self.refused == 1:
            LOG.warning("%s exceeds %g OCPP messages/s: refusing its frames until it slows down", self.station_id,
                        self.rate)  # fmt: skip
            self._event(f"over {self.rate:g} messages/s (bursts of {self.bucket.burst:g}): frames refused")
        return False

    def _event(self, summary: str) -> None:
        security_event_later(
            kind=StationEventKind.RATE_LIMITED, station_ident=self.station_id, address=self.address, summary=summary
        )
