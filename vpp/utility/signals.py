"""What a utility's event asks of the fleet, in the aggregator's terms: intervals of extra discharge (W).

Pure (no Django): each protocol client turns its event into an :class:`EventPlan`; ``vpp.utility.dispatch`` holds
it. Sign: ``power_w`` > 0 is load reduction / extra discharge asked of the portfolio (what a reserve deployment
adds to dispatch), W.

OpenADR 2.0b (openleadr's parsed ``oadrEvent``), per the 2.0b profile's signal names:

* ``LOAD_DISPATCH`` ``delta``: a change of the load in kW (the measurement's scale when given) -- a reduction of
  X kW is ``-X``, so ``power_w = -value``; ``setpoint`` (an absolute load) is not dispatched: the aggregator does
  not know the utility's baseline for it, and says so (optOut).
* ``SIMPLE`` ``level`` 0-3: ``level x level_step_w`` (the program's W per level; 0 when the program sets none, and
  the event is refused with that reason).
* anything else (prices, bids, ``LOAD_CONTROL``): stored and refused (optOut), with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

SCALES = {"none": 1.0, "": 1.0, "k": 1e3, "M": 1e6, "m": 1e-3}


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    end: datetime
    power_w: int


@dataclass(frozen=True)
class EventPlan:
    """One version of a utility's event as the aggregator will act on it (``refusal``: why it will not)."""

    event_ref: str
    modification: int
    kind: str
    intervals: list[Interval] = field(default_factory=list)
    refusal: str = ""
    cancelled: bool = False
    limit_w: int | None = None

    @property
    def start(self) -> datetime:
        return self.intervals[0].start

    @property
    def end(self) -> datetime:
        return self.intervals[-1].end

    @property
    def power_w(self) -> int:
        return max((i.power_w for i in self.intervals), default=0)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _scale(signal: dict[str, Any]) -> float:
    measurement = signal.get("measurement") or {}
    scale = measurement.get("scale") if isinstance(measurement, dict) else getattr(measurement, "scale", None)
    return SCALES.get(scale or "k", 1e3)  # LOAD_DISPATCH is in kW when no itemBase says otherwise


def openadr2_plan(event: dict[str, Any], *, level_step_w: int = 0) -> EventPlan:
    """The plan of an openleadr-parsed 2.0b event (its first signal of a kind dispatched here)."""
    descriptor = event["event_descriptor"]
    ref, modification = str(descriptor["event_id"]), int(descriptor.get("modification_number") or 0)
    cancelled = descriptor.get("event_status") == "cancelled"
    period = event["active_period"]
    start = _utc(period["dtstart"])
    end = start + period["duration"]
    signals = event.get("event_signals") or []
    chosen = next((s for s in signals if s.get("signal_name") in ("LOAD_DISPATCH", "SIMPLE", "simple")), None)
    if chosen is None:
        names = ", ".join(sorted({str(s.get("signal_name")) for s in signals})) or "none"
        return EventPlan(ref, modification, names[:32], [Interval(start, end, 0)], f"no dispatchable signal ({names})")
    name, kind = str(chosen["signal_name"]).upper(), str(chosen.get("signal_type", ""))
    label = f"{name}:{kind}"[:32]
    if name == "LOAD_DISPATCH" and kind != "delta":
        return EventPlan(ref, modification, label, [Interval(start, end, 0)], f"LOAD_DISPATCH {kind} not dispatched")
    if name == "SIMPLE" and level_step_w <= 0:
        return EventPlan(ref, modification, label, [Interval(start, end, 0)], "the program sets no W per SIMPLE level")
    intervals = []
    at = start
    for item in chosen.get("intervals") or []:
        duration: timedelta = item.get("duration") or (end - at)
        value = float(item.get("signal_payload", 0))
        power = -value * _scale(chosen) if name == "LOAD_DISPATCH" else value * level_step_w
        intervals.append(Interval(at, at + duration, round(power)))
        at += duration
    if not intervals:
        return EventPlan(ref, modification, label, [Interval(start, end, 0)], "the signal has no intervals")
    refusal = "" if any(i.power_w > 0 for i in intervals) else "asks for no load reduction (nothing to dispatch)"
    return EventPlan(ref, modification, label, intervals, refusal, cancelled)
