"""Group commit: one writer per server process turns many stations' writes into one DB transaction.

Consumers ``await writer.submit(job)``; the writer drains everything queued, runs the whole batch in one
transaction on its own database thread, and resolves each job's future only after COMMIT, so a station is answered
only once what it sent is durable. While one batch commits the next one accumulates: the batch size adapts to the
load with no timer, and an idle server answers after a single round trip.

A batch that fails as a whole is retried job by job, each in its own transaction, so one bad job cannot take down
its neighbours: its own future gets the exception. A batch that failed because the database is away (its
connection no longer answers) is not retried job by job: every job gets the error at once, the broken connection is
closed, and the next batch connects anew.

Faults (issue 13): the queue is bounded for awaiting submitters (``submit`` waits for room), and a batch that takes
longer than ``stall_timeout`` (a database that accepts the TCP connection but answers nothing) fails its submitters
then; until the stuck call returns, new awaited jobs fail at once, so stations are answered InternalError (never
acknowledged without storage) and retransmit later. Nothing is started beside the stuck thread: it keeps the
batches strictly sequential, so a batch that still commits after its submitters were failed is the only copy (the
retransmitted messages are then recognised by their message ids).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection
from django.db.backends.signals import connection_created

LOG = logging.getLogger(__name__)
J = TypeVar("J")

BatchFn = Callable[[Sequence[J]], list[Any]]

_thread = threading.local()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _bind_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    _thread.loop = loop
    _thread.is_writer = True


def _writer_connection_limits(sender: Any, connection: Any, **kwargs: Any) -> None:
    """A writer thread's new PostgreSQL connection gets the writer's tighter statement timeout (settings)."""
    timeout_s = settings.DB_WRITER_STATEMENT_TIMEOUT_S
    if not getattr(_thread, "is_writer", False) or connection.vendor != "postgresql" or not timeout_s:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SET statement_timeout = {int(timeout_s) * 1000}")


connection_created.connect(_writer_connection_limits, dispatch_uid="chargers.writer.statement_timeout")


class WriterStalled(DatabaseError):
    """The database did not answer a group commit within the writer's stall timeout; nothing is acknowledged."""


AfterFn = Callable[[list[Any]], None]


def after_batch(fn: AfterFn, items: list[Any]) -> None:
    """Call ``fn(items)`` on this writer thread after the current batch's submitters have their answers.

    For work that must follow a COMMIT but need not delay the stations' acknowledgements (enqueueing downstream
    refreshes, publishing the live feed). The writer releases such work at most once per ``after_interval``: the
    items of every batch committed meanwhile are concatenated, in commit order, into one call per ``fn``, so a
    server answering a thousand stations enqueues a few downstream tasks a second, not one per batch. Discarded if
    its batch rolls back. Off a writer thread, ``fn(items)`` runs now. Exceptions are logged, never raised into the
    writer.
    """
    pending: list[tuple[AfterFn, list[Any]]] | None = getattr(_thread, "after", None)
    if pending is None:
        fn(items)
    else:
        pending.append((fn, items))


def _run_after(work: dict[AfterFn, list[Any]]) -> None:
    for fn, items in work.items():
        try:
            fn(items)
        except Exception:
            LOG.exception("after-batch work failed")


def writer_loop() -> asyncio.AbstractEventLoop | None:
    """On a writer thread, the event loop its writer serves; elsewhere None.

    Work that must happen on the loop after a commit (publishing to the channel layer, whose in-memory
    implementation is not thread-safe) is handed back to it with ``asyncio.run_coroutine_threadsafe``.
    """
    return getattr(_thread, "loop", None)


class GroupCommitWriter(Generic[J]):
    def __init__(
        self,
        batch_fn: BatchFn[J],
        *,
        max_batch: int = 1000,
        after_interval: float = 0.0,
        linger: float = 0.0,
        max_queue: int = 10_000,
        stall_timeout: float | None = None,
    ) -> None:
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        # Awaiting submitters wait while this many jobs are queued. submit_nowait records are not held back: they
        # are the audit of exchanges that already happened (dropping one would lose the audit, refusing one has
        # nobody to tell), and each comes from a frame or a CSMS call that itself passed a bounded queue (a
        # connection's inbox or calls), so their number is bounded by the stations' and small.
        self._max_queue = max_queue
        self._room: list[asyncio.Future[None]] = []  # submitters waiting for the queue to have room
        self._stall_timeout = stall_timeout
        self.stalled = False  # a batch is stuck past stall_timeout; awaited jobs fail at once meanwhile
        self._after_interval = after_interval
        self._linger = linger
        self._deferred: list[J] = []  # submit_nowait jobs waiting for a pause (see submit_nowait)
        self._deferred_last = 0.0  # loop time of the newest one
        self._deferred_timer: asyncio.TimerHandle | None = None
        self._held: list[tuple[AfterFn, list[Any]]] = []  # after_batch work waiting for its release
        self._release_at: float | None = None  # loop time of the scheduled release, if one is scheduled
        self._released_at = float("-inf")
        self._queue: asyncio.Queue[tuple[J, asyncio.Future[Any] | None]] = asyncio.Queue()
        # One thread keeps one persistent DB connection; batches are strictly sequential, which is also what
        # keeps a station's messages in arrival order.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ocpp-writer", initializer=_bind_loop, initargs=(_running_loop(),)
        )
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.jobs = 0

    async def submit(self, job: J) -> Any:
        """Queue ``job`` and wait until its batch has committed; returns the job's result or raises its error."""
        self._ensure_running()
        loop = asyncio.get_running_loop()
        if self._queue.qsize() >= self._max_queue:  # cheap check first: no extra await on the hot path
            room: asyncio.Future[None] = loop.create_future()
            self._room.append(room)
            await room
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put_nowait((job, future))
        return await future

    def _make_room(self) -> None:
        """Let waiting submitters in, oldest first, while the queue has room."""
        free = self._max_queue - self._queue.qsize()
        while self._room and free > 0:
            room = self._room.pop(0)
            if not room.done():  # a submitter that gave up (cancelled) takes no room
                room.set_result(None)
                free -= 1

    def submit_nowait(self, job: J, *, defer: bool = False) -> None:
        """Queue ``job`` with nothing waiting for its commit (records nobody is answered on); a failure is logged.

        Without ``defer`` it is queued now, in order with every other job. With ``defer`` it is held until
        ``linger`` seconds pass without a new deferred job (or ``max_batch`` are held), then queued with the
        others in submission order: a dispatch to a thousand stations logs a thousand calls as their
        answers arrive, and writing them meanwhile would take the CPU the answers still need. Nothing waits on them,
        so no answer is delayed; nothing may depend on them being stored before a later job (they are records).
        """
        self._ensure_running()
        if not defer:
            self._queue.put_nowait((job, None))
            return
        self._deferred.append(job)
        loop = asyncio.get_running_loop()
        self._deferred_last = loop.time()
        if len(self._deferred) >= self._max_batch or self._linger <= 0:
            self._release_deferred()
        elif self._deferred_timer is None:
            self._deferred_timer = loop.call_at(self._deferred_last + self._linger, self._deferred_due)

    def _deferred_due(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_at = self._deferred_last + self._linger
        if loop.time() < quiet_at:  # more arrived meanwhile: wait for the pause
            self._deferred_timer = loop.call_at(quiet_at, self._deferred_due)
            return
        self._deferred_timer = None
        self._release_deferred()

    def _release_deferred(self) -> None:
        if self._deferred_timer is not None:
            self._deferred_timer.cancel()
            self._deferred_timer = None
        jobs, self._deferred = self._deferred, []
        for job in jobs:
            self._queue.put_nowait((job, None))

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ocpp-group-commit")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried: list[tuple[J, asyncio.Future[Any] | None]] = []  # records held through a stall, in order
        while True:
            batch = carried or [await self._queue.get()]
            carried = []
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if self._room:
                self._make_room()
            # A job that is pointless once its submitter is gone (a handshake Daphne killed for waiting too long)
            # is skipped: applying it would spend a reconnect storm's capacity on dead sockets and leave a stale
            # claim behind. Jobs say so with a true ``drop_if_abandoned`` attribute; all others always apply.
            batch = [
                (job, fut)
                for job, fut in batch
                if fut is None or not (fut.cancelled() and getattr(job, "drop_if_abandoned", False))
            ]
            if not batch:
                continue
            jobs = [job for job, _ in batch]
            after: list[tuple[AfterFn, list[Any]]] = []
            applying = loop.run_in_executor(self._executor, self._apply_collecting, jobs)
            if self._stall_timeout is not None:
                # One timer per batch (not per job): only a stuck batch costs anything more.
                done, _ = await asyncio.wait({applying}, timeout=self._stall_timeout)
                if not done:
                    carried = await self._stall(applying, batch)
                    continue
            try:
                outcomes, after = await applying
            except Exception as exc:  # the executor itself failed: nothing was applied
                LOG.exception("group commit failed")
                outcomes = [exc] * len(batch)
            self.batches += 1
            self.jobs += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future is None:  # submit_nowait: nobody waits; _apply_collecting already logged a failure
                    continue
                if future.done():  # the submitter gave up (connection closed); the write stands
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            if after:
                self._hold(after)

    async def _stall(
        self, applying: asyncio.Future[Any], batch: list[tuple[J, asyncio.Future[Any] | None]]
    ) -> list[tuple[J, asyncio.Future[Any] | None]]:
        """The batch is stuck in the database: fail its submitters, and every awaited job until it returns.

        The stuck batch may still commit later (the database was only slow to answer): its submitters were told
        InternalError, so the stations retransmit and the message-id check finds the stored copy. Its after-batch
        work is dropped (the telemetry it carried is superseded by the next readings). Records (submit_nowait) are
        kept, in order, and written once the database answers again. Returns them.
        """
        started = asyncio.get_running_loop().time()
        self.stalled = True
        LOG.error(
            "group commit stuck for %.1f s (database not answering): answering InternalError until it recovers",
            self._stall_timeout,
        )
        stalled = WriterStalled("the database did not answer in time")
        for _, future in batch:
            if future is not None and not future.done():
                future.set_exception(stalled)
        held: list[tuple[J, asyncio.Future[Any] | None]] = []
        while not applying.done():
            getting = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({applying, getting}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            pending = [getting.result()]
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
            for job, future in pending:
                if future is None:
                    held.append((job, None))
                elif not future.done():
                    future.set_exception(stalled)
            self._make_room()
        self.stalled = False
        try:
            applying.result()
            LOG.warning("group commit answered again after %.1f s", asyncio.get_running_loop().time() - started)
        except Exception:
            LOG.warning("stuck group commit failed after %.1f s", asyncio.get_running_loop().time() - started)
        return held

    def _hold(self, after: list[tuple[AfterFn, list[Any]]]) -> None:
        self._held.extend(after)
        if self._release_at is not None:
            return
        loop = asyncio.get_running_loop()
        self._release_at = max(loop.time(), self._released_at + self._after_interval)
        loop.call_at(self._release_at, self._release)

    def _release(self) -> None:
        """Queue the held work on the writer thread (ahead of the next batch, behind nothing a station waits for)."""
        work: dict[AfterFn, list[Any]] = {}
        for fn, items in self._held:
            work.setdefault(fn, []).extend(items)
        self._held, self._release_at = [], None
        self._released_at = asyncio.get_running_loop().time()
        self._executor.submit(_run_after, work)

    def _apply_collecting(self, jobs: list[J]) -> tuple[list[Any], list[tuple[AfterFn, list[Any]]]]:
        """``_apply`` with ``after_batch`` work collected from the attempt that committed."""
        try:
            _thread.after = []
            outcomes = self._apply(jobs)
            return outcomes, _thread.after
        finally:
            _thread.after = None

    def _apply(self, jobs: list[J]) -> list[Any]:
        """Runs on the writer thread: the batch in one transaction, else each job alone."""
        try:
            return self._batch_fn(jobs)
        except Exception as exc:
            _thread.after = []  # the batch rolled back: nothing it registered may run
            if isinstance(exc, OperationalError | InterfaceError) and _connection_lost():
                # The database is away, not one job bad: retrying job by job would cost each its own timeout.
                LOG.error("group commit of %d jobs failed, database unreachable: %s", len(jobs), exc)
                return [exc] * len(jobs)
            if len(jobs) == 1:
                close_old_connections()
                return [_capture(self._batch_fn, jobs)]
            LOG.warning("batch of %d failed; retrying job by job", len(jobs), exc_info=True)
        close_old_connections()
        return [_capture(self._batch_fn, [job]) for job in jobs]


def _connection_lost() -> bool:
    """After a failed batch: is this thread's connection gone (then closed, so the next batch connects anew)?

    A psycopg connection whose server vanished stays in a broken state; Django would reuse it until
    ``close_old_connections`` found it unusable. Checked here, on the failure path only.
    """
    try:
        lost = connection.connection is None or not connection.is_usable()
    except Exception:
        lost = True
    if lost:
        try:
            connection.close()
        except Exception:  # closing a dead connection may itself fail; Django forgets it either way
            LOG.debug("closing the broken connection failed", exc_info=True)
    return lost


def _capture(batch_fn: BatchFn[J], jobs: list[J]) -> Any:
    pending: list[tuple[AfterFn, list[Any]]] | None = getattr(_thread, "after", None)
    mark = len(pending) if pending is not None else 0
    try:
        return batch_fn(jobs)[0]
    except Exception as exc:
        if pending is not None:
            del pending[mark:]  # this job rolled back: drop what it registered
        LOG.exception("job failed: %r", jobs[0])
        return exc


_writers: dict[tuple[int, BatchFn[Any]], GroupCommitWriter[Any]] = {}


def writer_for_loop(batch_fn: BatchFn[J]) -> GroupCommitWriter[J]:
    """The process's batcher of ``batch_fn`` for the running event loop (Daphne runs one loop; tests may run
    several). Each batch function gets its own thread and connection, so handshake reads never queue behind writes.
    """
    key = (id(asyncio.get_running_loop()), batch_fn)
    writer = _writers.get(key)
    if writer is None:
        writer = _writers[key] = GroupCommitWriter(
            batch_fn,
            after_interval=settings.OCPP_TELEMETRY_INTERVAL,
            linger=settings.OCPP_LOG_LINGER,
            max_queue=settings.OCPP_WRITER_QUEUE_MAX,
            stall_timeout=settings.DB_WRITER_STALL_S,
        )
    return writer
