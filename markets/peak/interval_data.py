"""Interval data a depot's operator uploads (CSV or JSON): parsed to whole-watt, UTC interval points, all or
nothing, every refused line or JSON Pointer named. Stored by :func:`markets.peak.services.site_interval_data_upload`.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

from markets.peak.models import MeterSource

MAX_POINTS = 50_000  # one upload: a year of 15-min intervals is 35,040


class PeakError(ValueError):
    """A peak-shaving request that cannot be done as asked (the message says why)."""


class IntervalDataError(ValueError):
    """Uploaded interval data refused: ``errors`` lists (JSON Pointer or "line N", message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{where}: {what}" for where, what in errors[:5]))
        self.errors = errors


Point = tuple[datetime, int, int]  # (start UTC, interval s, import W)


def _aware(text: Any) -> datetime:
    value = datetime.fromisoformat(str(text).strip())
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value.astimezone(UTC)


def _point(start: Any, minutes: Any, import_w: Any, import_kw: Any) -> Point:
    at = _aware(start)
    m = int(minutes)
    if not 1 <= m <= 60:
        raise ValueError("interval_minutes must be 1 to 60")
    import_w = None if import_w is None or str(import_w).strip() == "" else import_w  # CSV: a blank column
    import_kw = None if import_kw is None or str(import_kw).strip() == "" else import_kw
    if (import_w is None) == (import_kw is None):
        raise ValueError("give exactly one of import_w and import_kw")
    if import_w is not None:
        if isinstance(import_w, float) or str(import_w).strip().lstrip("-").isdigit() is False:
            raise ValueError(f"import_w {import_w!r} is not a whole number of W")
        w = int(import_w)
    else:
        kw = Decimal(str(import_kw))  # not a number: InvalidOperation, refused by the callers
        if not kw.is_finite():
            raise ValueError(f"import_kw {import_kw!r} is not a finite number")
        w = int((kw * 1000).to_integral_value())
    if abs(w) > 10**12:
        raise ValueError("import beyond 1 TW")
    return at, m * 60, w


def interval_data_parse_csv(stream: TextIO) -> list[Point]:
    """``interval_start,interval_minutes,import_w`` (or ``import_kw``); ISO 8601 with an offset; all or nothing."""
    reader = csv.DictReader(stream)
    fields = set(reader.fieldnames or [])
    if not {"interval_start", "interval_minutes"} <= fields or not fields & {"import_w", "import_kw"}:
        raise IntervalDataError([("line 1", "header must be interval_start,interval_minutes,import_w (or import_kw)")])
    points, errors = [], []
    for n, row in enumerate(reader, start=2):
        try:
            points.append(
                _point(row["interval_start"], row["interval_minutes"], row.get("import_w"), row.get("import_kw"))
            )
        except (ValueError, TypeError, InvalidOperation) as exc:
            errors.append((f"line {n}", str(exc)))
    return _checked(points, errors)


def interval_data_parse_json(body: Any) -> list[Point]:
    """``{"readings": [{"interval_start", "interval_minutes", "import_w" | "import_kw"}, ...]}``; all or nothing."""
    items = body.get("readings") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise IntervalDataError([("#/readings", "a list of readings is required")])
    points, errors = [], []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append((f"#/readings/{k}", "must be an object"))
            continue
        try:
            points.append(
                _point(
                    item.get("interval_start"),
                    item.get("interval_minutes"),
                    item.get("import_w"),
                    item.get("import_kw"),
                )
            )
        except (ValueError, TypeError, InvalidOperation) as exc:
            errors.append((f"#/readings/{k}", str(exc)))
    return _checked(points, errors)


def _checked(points: list[Point], errors: list[tuple[str, str]]) -> list[Point]:
    if errors:
        raise IntervalDataError(errors)
    if not points:
        raise IntervalDataError([("#/readings", "no readings")])
    if len(points) > MAX_POINTS:
        raise IntervalDataError([("#/readings", f"at most {MAX_POINTS} readings per upload")])
    if len({(p[0], p[1]) for p in points}) != len(points):
        raise IntervalDataError([("#/readings", "an interval appears twice")])
    return points


MAX_UPLOAD_ERRORS = 100  # an upload with every line wrong is told about the first hundred


def interval_data_parse(body: bytes, *, source: str) -> list[Point]:
    """Parse an upload's bytes as CSV (UTF-8, a BOM allowed: spreadsheets write one) or JSON; all or nothing."""
    if source == MeterSource.CSV:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise IntervalDataError([("line 1", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
        return interval_data_parse_csv(io.StringIO(text, newline=""))
    if source == MeterSource.JSON:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntervalDataError([("#", f"not JSON: {exc}")]) from None
        return interval_data_parse_json(document)
    raise PeakError(f"unknown interval data source {source!r}")
