"""Shared bits for the edge agent's benches: percentiles and the figures-vs-targets table."""

from __future__ import annotations

import os
import platform


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def table(title: str, rows: list[tuple[str, str, str, bool | None]]) -> None:
    """Print rows of (figure, measured, target, met?)."""
    print(f"\n{title}")
    print(f"  host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared, loaded machine)")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print(f"  {'figure':<{w0}}  {'measured':>{w1}}  {'target':<{w2}}  verdict")
    print(f"  {'-' * w0}  {'-' * w1}  {'-' * w2}  -------")
    for name, measured, target, ok in rows:
        verdict = "" if ok is None else ("MET" if ok else "NOT MET")
        print(f"  {name:<{w0}}  {measured:>{w1}}  {target:<{w2}}  {verdict}")
