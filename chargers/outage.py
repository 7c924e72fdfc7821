"""One log line when a dependency (Redis, the Celery broker) goes away and one when it is back, not one per retry.

Every consumer's channel pump, the fan-out node and the telemetry publisher retry on their own with a growing,
capped back-off (:func:`backoff`); they report to a shared :class:`Outage`, which logs the first failure of an
outage (with the error) and the first success after it (with how long it lasted and how many attempts failed).
"""

from __future__ import annotations

import logging
import threading
import time

LOG = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 2.0  # a dependency that is back is used again within this, plus one attempt


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...): doubling from 0.1 s, capped at 2 s."""
    return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** max(failures - 1, 0))


class Outage:
    """The state of one dependency as this process sees it; thread-safe (publishers run on their own threads)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None  # monotonic time of the outage's first failure; None while reachable
        self.failures = 0  # failed attempts in the current outage
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            if self.since is not None:
                return
            self.since = time.monotonic()
        LOG.error("%s unreachable (%s: %s); retrying with back-off", self.what, type(exc).__name__, exc)

    def recovered(self) -> None:
        if self.since is None:  # the common case, without the lock
            return
        with self._lock:
            if self.since is None:
                return
            lasted, failures = time.monotonic() - self.since, self.failures
            self.since, self.failures = None, 0
        LOG.warning("%s reachable again after %.1f s (%d failed attempts)", self.what, lasted, failures)


#: The channel layer (Redis): the consumers' pumps and the fan-out node report here.
CHANNEL_LAYER = Outage("channel layer (Redis)")
