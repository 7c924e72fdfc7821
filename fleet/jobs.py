"""Enqueue this app's Celery tasks by their registered name, after the current transaction commits.

By name, not by importing ``fleet.tasks``: the tasks call the services that enqueue them, so an import would close a
cycle (services -> tasks -> services). The Celery app imports every app's ``tasks`` module when it finalises
(``vpp.celery``), so the name resolves in the worker, in Daphne and in eager mode alike; an unknown name raises
``KeyError`` at once instead of silently queueing a message nobody consumes.

``task_enqueue_background`` is for callers that must never wait on the broker (the CSMS's group-commit writer
thread hands committed telemetry down through it): the message goes into a bounded queue that a thread of its own
publishes, retrying with back-off while Redis is away.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery, current_app
from django.db import transaction

from chargers.outage import Outage, backoff

LOG = logging.getLogger(__name__)

REFRESH_VEHICLE_STATE = "fleet.refresh_vehicle_state"
INGEST_TELEMETRY = "fleet.ingest_telemetry"


def task_enqueue_on_commit(*, name: str, args: tuple[Any, ...] = (), countdown: float | None = None) -> None:
    """Send task ``name`` with ``args`` once the surrounding transaction commits (at once outside one)."""
    task = current_app.tasks[name]
    transaction.on_commit(lambda: task.apply_async(args, countdown=countdown))


def tasks_run_eagerly() -> bool:
    """True with no broker (the embedded default): a task runs in the caller when it is sent."""
    return bool(current_app.conf.task_always_eager)


def task_enqueue_background(*, name: str, args: tuple[Any, ...] = ()) -> None:
    """Like ``task_enqueue_on_commit``, but the caller never waits on the broker: a background thread publishes.

    With tasks run eagerly (no broker) the task runs on commit in the caller, as before: there is nothing to wait
    for but the task itself. Otherwise the message is queued for :data:`PUBLISHER`, which is bounded: if the broker
    stays away long enough to fill it, the oldest messages are dropped, counted and logged.
    """
    task = current_app.tasks[name]
    if tasks_run_eagerly():
        transaction.on_commit(lambda: task.apply_async(args))
    else:
        transaction.on_commit(lambda: PUBLISHER.put(name, args))


class BackgroundPublisher:
    """A bounded FIFO of task messages published by one daemon thread, retried while the broker is away.

    ``put`` never blocks (it runs on the CSMS writer thread, between group commits). A failed publish is retried
    (back-off doubling from 0.1 s, capped at 2 s, chargers.outage) with the message kept, so order is kept and a
    broker that returns gets the backlog within seconds; the outage is logged once, with how many messages were
    dropped when it ends. Only messages whose loss is tolerable belong here: see ``fleet.telemetry``.
    """

    def __init__(self, *, maxsize: int = 1000, app: Celery | None = None, what: str = "Celery broker (Redis)") -> None:
        self.maxsize = maxsize
        self.app = app  # None: the current app (the process's, configured from settings)
        self.dropped = 0  # messages dropped because the queue was full, over the publisher's life
        self.published = 0
        self._queue: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False  # a message is being published (taken off the queue, not yet sent)
        self._stopped = False
        self.outage = Outage(what)

    def put(self, name: str, args: tuple[Any, ...]) -> None:
        with self._ready:
            if len(self._queue) >= self.maxsize:
                dropped = self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    LOG.error(
                        "task queue full (%d) while the broker is away: dropped the oldest %s (%d dropped so far)",
                        self.maxsize,
                        dropped[0],
                        self.dropped,
                    )
            self._queue.append((name, args))
            self._thread_ensure()
            self._ready.notify()

    def _thread_ensure(self) -> None:
        """Start the publishing thread unless it runs (the caller holds ``_ready``)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="task-publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop retrying and publishing (tests; a process that exits drops its daemon thread anyway)."""
        with self._ready:
            self._stopped = True
            self._ready.notify()

    def drain(self, *, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the queue to be published (a graceful exit); returns what is left."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            if self._queue and not self._stopped:
                try:  # a process that never published has no thread yet
                    self._thread_ensure()
                except RuntimeError:  # Python >= 3.12 refuses new threads at interpreter exit
                    LOG.warning("%d task messages not published: no thread can start at exit", len(self._queue))
                    return len(self._queue)
        while (left := self.pending()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return left

    def pending(self) -> int:
        """Messages not yet handed to the broker (queued or being published)."""
        with self._ready:
            return len(self._queue) + self._busy

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._stopped:
                    self._ready.wait()
                if self._stopped:
                    return
                name, args = self._queue.popleft()
                self._busy = True
            self._publish(name, args)
            with self._ready:
                self._busy = False

    def _publish(self, name: str, args: tuple[Any, ...]) -> None:
        failures = 0
        while not self._stopped:
            try:
                # By name, as the worker knows it; no retries inside kombu: this loop retries, keeping the order.
                (self.app or current_app).send_task(name, args=args, retry=False)
            except (OSError, kombu.exceptions.OperationalError, redis.exceptions.RedisError) as exc:
                # The broker is away: keep the message, wait, try again.
                failures += 1
                self.outage.failed(exc)
                time.sleep(backoff(failures))
                continue
            except Exception:  # a message the broker can never take (it cannot be encoded): retrying would stall
                LOG.exception("task %s could not be published; dropped", name)  # every message queued behind it
                self.dropped += 1
                return
            self.published += 1
            if failures:
                self.outage.recovered()
                if self.dropped:
                    LOG.warning("%d task messages dropped so far while the broker was away", self.dropped)
            return


#: The process's background publisher (fleet telemetry ingestion).
PUBLISHER = BackgroundPublisher()
