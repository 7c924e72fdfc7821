"""The offline buffer: a SQLite queue every TransactionEvent and MeterValues goes through, written before sending.

Contract:
- ``Outbox.put`` commits the message (with its seqNo and timestamp already in the payload) before the sender can
  see it; the sender sends strictly in insertion order and deletes a row only after the CSMS answered it.
- Every row carries its OCPP message id, chosen when it is queued. Every transmission of the row (the first, a
  retry after a CALLERROR or a timeout, a resend after a reconnect or an agent restart) sends that id with the
  stored JSON text unchanged, so the CSMS recognises a retransmission (same id, same payload) of a message it
  may already have stored. ``offline`` is decided once, when the event happens (the link's state then, as the
  spec defines the field: "this event happened while the station was offline"), and frozen with the row.
- Many stations may share one file (the simulated fleet); ``batch()`` groups their inserts and acknowledgements
  into one commit (group commit), and queued messages become visible to senders only after that commit.
- Under a running agent (``run_writer()``), writes leave the event loop: a writer task group-commits everything
  queued so far in a worker thread (the fsync happens there) and only then hands the messages to the senders.
  The control loop never waits for the disk; a message is still never sent before it is on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    queued_offline INTEGER NOT NULL DEFAULT 0,
    message_id TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS outbox_station ON outbox (station_id, id);
CREATE TABLE IF NOT EXISTS kv (
    station_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (station_id, key)
);
"""
KV_UPSERT = (
    "INSERT INTO kv (station_id, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (station_id, key) DO UPDATE SET value = excluded.value"
)


INSERT_ROW = "INSERT INTO outbox (station_id, action, payload, queued_offline, message_id) VALUES (?, ?, ?, ?, ?)"


def new_message_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class OutboxItem:
    id: int
    action: str
    payload: dict[str, Any]  # the OCPP payload as it goes on the wire (camelCase)
    text: str  # the payload's JSON as stored: sent as is, byte for byte, on every transmission
    message_id: str  # the OCPP message id of every transmission of this row
    failures: int = 0  # transmissions the CSMS refused with a retryable error or did not answer (this run)
    not_before: float = 0.0  # event-loop time before which the next transmission waits (E13 back-off)


class OutboxStore:
    """The SQLite file.

    ``durable=True`` (a real agent) fsyncs every commit: nothing acknowledged by the disk is lost even on a power
    cut. ``durable=False`` (the simulated fleet, thousands of stations in one process on a shared disk) never
    fsyncs: a crash of the process still loses nothing (the kernel holds the written pages), a power cut may.
    """

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "message_id" not in columns:  # a queue file from before message ids were stored
            self._db.execute("ALTER TABLE outbox ADD COLUMN message_id TEXT")
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []
        self._acks: list[int] = []
        self._lock = threading.Lock()  # the connection is used by the writer thread and, at start-up, the loop
        self._writer_on = False
        self._queue: list[tuple[Any, ...]] = []
        self._wake: asyncio.Event | None = None
        self._drain_lock = asyncio.Lock()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for everything inside (nested batches join the outer one)."""
        if self._writer_on:  # the writer task group-commits anyway
            yield
            return
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
                self._after_commit.clear()
            raise
        self._depth -= 1
        if self._depth == 0:
            if self._acks:
                self._flush_acks()
            self._db.execute("COMMIT")
            callbacks, self._after_commit = self._after_commit, []
            for cb in callbacks:
                cb()

    def insert(self, station_id: str, action: str, text: str, queued_offline: bool, message_id: str) -> int:
        with self.batch():
            cur = self._db.execute(INSERT_ROW, (station_id, action, text, int(queued_offline), message_id))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def put_row(
        self,
        station_id: str,
        action: str,
        text: str,
        queued_offline: bool,
        message_id: str,
        committed: Callable[[int], None],
    ) -> None:
        """Store a message; ``committed(row_id)`` runs once it is durably on disk."""
        if self._writer_on:
            self._queue.append(("ins", station_id, action, text, int(queued_offline), message_id, committed))
            self._signal()
            return
        row_id = self.insert(station_id, action, text, queued_offline, message_id)
        self.after_commit(lambda: committed(row_id))

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def writer_running(self) -> bool:
        return self._writer_on

    def start_writer(self) -> asyncio.Task[None]:
        """From now on writes are queued and group-committed by a writer task in a worker thread.

        Cancelling the task drops rows not yet written, as a crash would: they were never visible to a sender.
        """
        if self._depth:
            raise RuntimeError("start the writer outside a batch")
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._writer_on = True
        return asyncio.ensure_future(self._writer_loop())

    async def _writer_loop(self) -> None:
        assert self._wake is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self.drain()
        finally:
            self._writer_on = False
            self._wake = None

    async def drain(self) -> None:
        """Write and commit everything queued so far, then publish the committed messages, in order."""
        async with self._drain_lock:
            queue, self._queue = self._queue, []
            acks, self._acks = self._acks, []
            if not queue and not acks:
                return
            row_ids = await asyncio.to_thread(self._write, queue, acks)
            for entry, row_id in zip([e for e in queue if e[0] == "ins"], row_ids, strict=True):
                entry[6](row_id)

    def _write(self, queue: list[tuple[Any, ...]], acks: list[int]) -> list[int]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row_ids = []
                for entry in queue:
                    if entry[0] == "ins":
                        cur = db.execute(INSERT_ROW, entry[1:6])
                        assert cur.lastrowid is not None
                        row_ids.append(cur.lastrowid)
                    else:
                        db.execute(KV_UPSERT, entry[1:4])
                if acks:
                    db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in acks])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return row_ids

    def after_commit(self, cb: Callable[[], None]) -> None:
        if self._depth == 0:
            cb()
        else:
            self._after_commit.append(cb)

    def ack(self, item_id: int, *, defer: bool = False) -> None:
        """Delete an answered message; ``defer`` folds it into the next batch commit (a repeat is harmless)."""
        self._acks.append(item_id)
        if self._writer_on:
            self._signal()
            return
        if not defer and self._depth == 0:
            with self.batch():
                pass

    def _flush_acks(self) -> None:
        ids, self._acks = self._acks, []
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def flush(self) -> None:
        if self._acks and self._depth == 0 and not self._writer_on:
            with self.batch():
                pass

    def pending(self, station_id: str) -> list[OutboxItem]:
        """The station's unanswered rows, oldest first, each with the id and text of its earlier transmissions."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, action, payload, message_id FROM outbox WHERE station_id = ? ORDER BY id", (station_id,)
            ).fetchall()
            legacy = [(new_message_id(), r[0]) for r in rows if not r[3]]
            if legacy:  # rows from before ids were stored: fix an id now, so every later run resends the same
                with self.batch():
                    self._db.executemany("UPDATE outbox SET message_id = ? WHERE id = ?", legacy)
        ids = {row_id: mid for mid, row_id in legacy}
        return [OutboxItem(r[0], r[1], json.loads(r[2]), r[2], r[3] or ids[r[0]]) for r in rows]

    def count(self, station_id: str | None = None) -> int:
        if station_id is None:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM outbox WHERE station_id = ?", (station_id,)).fetchone()[0])

    def kv_get(self, station_id: str, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE station_id = ? AND key = ?", (station_id, key)).fetchone()
        return None if row is None else str(row[0])

    def kv_set(self, station_id: str, key: str, value: str) -> None:
        if self._writer_on:  # written with the messages queued before and after it, in order
            self._queue.append(("kv", station_id, key, value))
            self._signal()
            return
        with self.batch():
            self._db.execute(KV_UPSERT, (station_id, key, value))

    def close(self) -> None:
        self.flush()
        self._db.close()


class Outbox:
    """One station's queue: the durable rows plus an in-memory copy the sender works from."""

    def __init__(self, store: OutboxStore, station_id: str, *, defer_acks: bool = False) -> None:
        self.store = store
        self.station_id = station_id
        self.defer_acks = defer_acks
        self.items: deque[OutboxItem] = deque(store.pending(station_id))
        self._seq: dict[str, int] = {}
        self._wakeup: Callable[[], None] | None = None

    def on_put(self, wakeup: Callable[[], None]) -> None:
        self._wakeup = wakeup

    def put(self, action: str, payload: dict[str, Any], *, offline: bool) -> OutboxItem:
        """Store the message durably; the sender sees it only once it is committed."""
        text = json.dumps(payload, separators=(",", ":"))
        item = OutboxItem(0, action, payload, text, new_message_id())

        def _visible(row_id: int) -> None:
            item.id = row_id
            self.items.append(item)
            if self._wakeup is not None:
                self._wakeup()

        self.store.put_row(self.station_id, action, text, offline, item.message_id, _visible)
        return item

    def head(self) -> OutboxItem | None:
        return self.items[0] if self.items else None

    def done(self, item: OutboxItem) -> None:
        """The CSMS answered with a CALLRESULT, or refused the message for good: forget it (never on a retry)."""
        if self.items and self.items[0].id == item.id:
            self.items.popleft()
        self.store.ack(item.id, defer=self.defer_acks)

    def next_seq_no(self, transaction_id: str) -> int:
        """seqNo for the next event of a transaction, persisted with the event itself when inside a batch."""
        key = f"seq:{transaction_id}"
        current = self._seq.get(transaction_id)
        if current is None:
            stored = self.store.kv_get(self.station_id, key)
            current = -1 if stored is None else int(stored)
        seq = current + 1
        self._seq[transaction_id] = seq
        self.store.kv_set(self.station_id, key, str(seq))
        return seq

    def __len__(self) -> int:
        return len(self.items)
