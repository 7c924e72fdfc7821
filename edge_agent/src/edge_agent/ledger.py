"""The acknowledgement ledger: one JSON line per station-initiated CALL the CSMS answered with a CALLRESULT.

A fault drill compares it with what the CSMS stored: every line is a message the station was told is stored, so
it must be in the CSMS's database exactly once. Line format (a contract other tools read; keys in this order)::

    {"station": "<station id>", "action": "<Action>", "message_id": "<id>", "seq_no": <int or null>,
     "meter_timestamp": "<ISO timestamp of the first meterValue or null>", "payload_sha256": "<hex>",
     "acked_at": "<ISO UTC>"}

``payload_sha256`` is :func:`payload_digest` of the exact payload object sent in the acknowledged transmission.

Each line is appended with ONE ``write`` on an ``O_APPEND`` descriptor (no user-space buffer: the line is in the
kernel as soon as ``record`` returns, so a SIGKILL of the agent loses nothing written; there is no fsync, so a power
cut may). A line torn by a crash mid-write can only be the last one: ``read_ledger`` skips it, and opening the
ledger again cuts it off before appending.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = logging.getLogger("edge_agent.ledger")


def payload_digest(payload: dict[str, Any]) -> str:
    """sha256 (hex) of the payload's canonical JSON: sorted keys, no spaces, UTF-8 (independent of key order)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _meter_timestamp(payload: dict[str, Any]) -> str | None:
    values = payload.get("meterValue")
    if isinstance(values, list) and values and isinstance(values[0], dict):
        ts = values[0].get("timestamp")
        return ts if isinstance(ts, str) else None
    return None


def ledger_line(
    *, station: str, action: str, message_id: str, payload: dict[str, Any], acked_at: datetime | None = None
) -> dict[str, Any]:
    seq_no = payload.get("seqNo") if action == "TransactionEvent" else None
    at = (acked_at or datetime.now(UTC)).astimezone(UTC)
    return {
        "station": station,
        "action": action,
        "message_id": message_id,
        "seq_no": seq_no if isinstance(seq_no, int) else None,
        "meter_timestamp": _meter_timestamp(payload),
        "payload_sha256": payload_digest(payload),
        "acked_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }


class Ledger:
    """Appends ledger lines to one file; shared by every station of a process (one lock, one descriptor)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """A last line without its newline was torn by a crash: drop it, so the next line starts clean."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 65536))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail))
        LOG.warning("ledger %s: dropping a torn last line (%d bytes)", self.path, size - keep)
        os.truncate(self.path, keep)

    def record(self, *, station: str, action: str, message_id: str, payload: dict[str, Any]) -> None:
        line = ledger_line(station=station, action=action, message_id=message_id, payload=payload)
        data = (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; the loop only guards a short write
                written = os.write(self._fd, view)
                view = view[written:]

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_ledger(path: str | Path) -> Iterator[dict[str, Any]]:
    """The ledger's records; a torn last line (a crash mid-write) is skipped."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except ValueError:
            if i == len(lines) - 1:  # only the last line may be torn (it has no newline)
                return
            raise
