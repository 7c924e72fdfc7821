"""Regulation signal files in the layout of PJM's RegD test signal.

Layout (``pjm-regd-test-signal-40min.csv``): a header line whose first cell is empty and whose second names the
signal (``,RegDTest``), then one row per sample: ``H:MM:SS`` offset from the start, normalised value in [-1, 1]
(every 2 s in PJM's files). Pure Python + numpy, no Django.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from markets.regulation.scoring import mileage


class SignalFileError(ValueError):
    """A signal file that does not have the RegD test layout; the message names the line."""


@dataclass(frozen=True, slots=True)
class SignalTrace:
    """A normalised regulation signal: offsets in seconds from its start and values in [-1, 1]."""

    name: str
    offsets_s: NDArray[np.int64]
    values: NDArray[np.float64]

    @property
    def duration_s(self) -> int:
        return int(self.offsets_s[-1] - self.offsets_s[0]) if self.offsets_s.size else 0

    @property
    def mileage(self) -> float:
        return mileage(self.values)


def _parse_offset(text: str, line: int) -> int:
    parts = text.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise SignalFileError(f"line {line}: time {text!r} is not H:MM:SS")
    hours, minutes, seconds = (int(p) for p in parts)
    if minutes > 59 or seconds > 59:
        raise SignalFileError(f"line {line}: time {text!r} is not H:MM:SS")
    return hours * 3600 + minutes * 60 + seconds


def parse_signal_csv(text: str) -> SignalTrace:
    """Parse signal-file text; raises :class:`SignalFileError` naming the offending line."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or len(rows[0]) != 2 or rows[0][0].strip() != "" or not rows[0][1].strip():
        raise SignalFileError("line 1: expected a header ',<signal name>' (e.g. ',RegDTest')")
    name = rows[0][1].strip()
    offsets: list[int] = []
    values: list[float] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise SignalFileError(f"line {line}: expected 2 columns, got {len(row)}")
        offset = _parse_offset(row[0], line)
        try:
            value = float(row[1])
        except ValueError as exc:
            raise SignalFileError(f"line {line}: value {row[1]!r} is not a number") from exc
        if not -1.0 <= value <= 1.0:
            raise SignalFileError(f"line {line}: value {value} is outside the normalised range [-1, 1]")
        if offsets and offset <= offsets[-1]:
            raise SignalFileError(f"line {line}: time {row[0]} does not follow the previous row's")
        offsets.append(offset)
        values.append(value)
    if len(values) < 2:
        raise SignalFileError("the file holds fewer than two samples")
    return SignalTrace(name=name, offsets_s=np.asarray(offsets, dtype=np.int64), values=np.asarray(values))


def read_signal_csv(path: str | Path) -> SignalTrace:
    """Read a signal file (RegD test layout) from disk."""
    return parse_signal_csv(Path(path).read_text(encoding="utf-8-sig"))
