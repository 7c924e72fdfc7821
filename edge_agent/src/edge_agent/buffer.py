"""The offline buffer: a SQLite queue every TransactionEvent and MeterValues goes through, written before sending.

Contract:
- ``Outbox.put`` commits the message (with its seqNo and timestamp already in the payload) before the sender can
  see it; the sender sends strictly in insertion order and deletes a row only after the CSMS answered it.
- A message is sent "live" (``offline`` false) at most once: if it was queued while the link was down, was sent
  before without an answer, or survived a restart of the agent, it is replayed with ``offline`` true and its
  original seqNo and timestamp, so the CSMS can recognise a repeat instead of storing it twice.
- Many stations may share one file (the simulated fleet); ``batch()`` groups their inserts and acknowledgements
  into one commit (group commit), and queued messages become visible to senders only after that commit.
"""

from __future__ import annotations

import json
import sqlite3
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


@dataclass(slots=True)
class OutboxItem:
    id: int
    action: str
    payload: dict[str, Any]  # the OCPP payload as it goes on the wire (camelCase)
    replay: bool  # True: send with offline=true (queued offline, tried before, or from before a restart)
    text: str = ""  # the payload's JSON as stored (sent as is when nothing needs changing)


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
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []
        self._acks: list[int] = []

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for everything inside (nested batches join the outer one)."""
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

    def insert(self, station_id: str, action: str, text: str, queued_offline: bool) -> int:
        with self.batch():
            cur = self._db.execute(
                "INSERT INTO outbox (station_id, action, payload, queued_offline) VALUES (?, ?, ?, ?)",
                (station_id, action, text, int(queued_offline)),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def after_commit(self, cb: Callable[[], None]) -> None:
        if self._depth == 0:
            cb()
        else:
            self._after_commit.append(cb)

    def ack(self, item_id: int, *, defer: bool = False) -> None:
        """Delete an answered message; ``defer`` folds it into the next batch commit (a repeat is harmless)."""
        self._acks.append(item_id)
        if not defer and self._depth == 0:
            with self.batch():
                pass

    def _flush_acks(self) -> None:
        ids, self._acks = self._acks, []
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def flush(self) -> None:
        if self._acks and self._depth == 0:
            with self.batch():
                pass

    def pending(self, station_id: str) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT id, action, payload FROM outbox WHERE station_id = ? ORDER BY id", (station_id,)
        ).fetchall()
        # Anything still here from an earlier run may have reached the CSMS already: always a replay.
        return [OutboxItem(r[0], r[1], json.loads(r[2]), True, r[2]) for r in rows]

    def count(self, station_id: str | None = None) -> int:
        if station_id is None:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM outbox WHERE station_id = ?", (station_id,)).fetchone()[0])

    def kv_get(self, station_id: str, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE station_id = ? AND key = ?", (station_id, key)).fetchone()
        return None if row is None else str(row[0])

    def kv_set(self, station_id: str, key: str, value: str) -> None:
        with self.batch():
            self._db.execute(
                "INSERT INTO kv (station_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (station_id, key) DO UPDATE SET value = excluded.value",
                (station_id, key, value),
            )

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

    def put(self, action: str, payload: dict[str, Any], *, offline: bool) -> int:
        """Store the message durably; the sender sees it only once it is committed."""
        text = json.dumps(payload, separators=(",", ":"))
        item_id = self.store.insert(self.station_id, action, text, offline)
        item = OutboxItem(item_id, action, payload, offline, text)

        def _visible() -> None:
            self.items.append(item)
            if self._wakeup is not None:
                self._wakeup()

        self.store.after_commit(_visible)
        return item_id

    def head(self) -> OutboxItem | None:
        return self.items[0] if self.items else None

    def done(self, item: OutboxItem) -> None:
        """The CSMS answered (or refused for good): forget the message."""
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
