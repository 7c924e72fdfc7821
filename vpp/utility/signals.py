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

OpenADR 3.0 (an ``event`` object as the OpenADR 3 OpenAPI document defines it, JSON), by payload type:

* ``IMPORT_CAPACITY_LIMIT`` / ``DISPATCH_SETPOINT``: a ceiling / a setpoint of the portfolio's net import
  (``units`` of the event's or program's payloadDescriptor, default ``KW``): ``target_w``. The W of reduction is
  only known at dispatch time (the fleet's metered power then minus the target; nothing when already below). An
  import limit is also ``import_cap_w``: a cap on the fleet's charging while it lasts (departure needs win). An
  import limit below 0 is held at 0 (no import, never export: :func:`no_import_note`); a setpoint below 0 is export
  asked for, and dispatched.
* ``EXPORT_CAPACITY_LIMIT`` (>= 0): ``export_cap_w``, a cap on the portfolio's discharge while it lasts (nothing
  deployed; an interval may carry both limits).
* ``SIMPLE`` level 0-3: ``level x level_step_w``, as for 2.0b.
* ``PRICE`` and the rest: stored and refused with the reason (the fleet does not schedule on prices here).

IEEE 2030.5 / CSIP ``DERControl`` (parsed by ``vpp.utility.csip`` into :class:`DerControl`), by its
``DERControlBase`` mode (sign of 2030.5: + = the DER delivers, i.e. discharges):

* ``opModFixedW`` (hundredths of a percent of ``setMaxW``, the portfolio's plugged-in discharge rating): a target
  net import of ``-pct x setMaxW``.
* ``opModImpLimW`` (CSIP-AUS; W): a ceiling on import, a target and a cap as for OpenADR 3's import limit (below
  0 held at 0, likewise).
* ``opModExpLimW`` (CSIP-AUS; W >= 0): a cap on the portfolio's discharge, as OpenADR 3's export limit.
* ``opModConnect`` false: cease to energize -- a target of 0 W (no charging; discharge is never added).
* the other modes: stored and refused with the reason.

Whatever the protocol, a plan is :func:`bounded`: its intervals in time order, and refused with the reason when they
overlap, an interval deploying reserve outlasts a reserve deployment, the event spans over a day or a value exceeds
1 GW; a value that is not a finite number makes the event malformed (refused on its own).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

SCALES = {"none": 1.0, "": 1.0, "k": 1e3, "M": 1e6, "m": 1e-3}


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    end: datetime
    power_w: int
    target_w: int | None = None  # a net import to hold the portfolio to (W, + import): power_w known at dispatch
    export_cap_w: int | None = None  # net export at most this (W >= 0): a cap on the portfolio's discharge
    import_cap_w: int | None = None  # net import at most this (W): a cap on its charging, departure needs allowing

    @property
    def dispatched(self) -> bool:
        return self.power_w > 0 or self.target_w is not None or self.capped

    @property
    def capped(self) -> bool:
        return self.export_cap_w is not None or self.import_cap_w is not None


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
    note: str = ""  # what the aggregator does differently from what was asked (kept as the event's status reason)

    @property
    def start(self) -> datetime:
        return self.intervals[0].start

    @property
    def end(self) -> datetime:
        return self.intervals[-1].end

    @property
    def power_w(self) -> int:
        return max((i.power_w for i in self.intervals), default=0)


#: Bounds on what one event may ask, whatever its server says (each event out of them is refused on its own, with
#: the reason; the other events of the same poll still apply). An event spans at most MAX_EVENT; each interval that
#: deploys reserve lasts at most MAX_INTERVAL (a reserve deployment's maximum, ``markets.regulation.services.
#: RESERVE_MAX``: a longer one would be refused at dispatch time, after an optIn); every W value is within MAX_W.
MAX_EVENT = timedelta(hours=24)
MAX_INTERVAL = timedelta(hours=4)
MAX_W = 1_000_000_000  # 1 GW: far above any portfolio; a value beyond it is a unit or encoding error


def number(value: Any, what: str) -> float:
    """A payload value as a finite number (a string, a boolean, NaN or Infinity is malformed: ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: {value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"{what}: {value!r} is not finite")
    return float(value)


def bounded(plan: EventPlan) -> EventPlan:
    """``plan`` with its intervals in time order, or refused with the reason when it asks for more than one event
    may (:data:`MAX_EVENT`, :data:`MAX_INTERVAL`, :data:`MAX_W`) or its intervals overlap."""
    if plan.refusal or not plan.intervals:
        return plan
    intervals = sorted(plan.intervals, key=lambda i: (i.start, i.end))  # a VTN may list them in any order

    def refused(reason: str) -> EventPlan:
        span = [Interval(intervals[0].start, max(i.end for i in intervals), 0)]
        return EventPlan(plan.event_ref, plan.modification, plan.kind, span, reason, plan.cancelled)

    for k, interval in enumerate(intervals):
        if interval.end <= interval.start:
            return refused(f"interval {k} ends before it starts")
        if k and interval.start < intervals[k - 1].end:
            return refused(f"intervals {k - 1} and {k} overlap")
        deploys = interval.power_w > 0 or interval.target_w is not None
        if deploys and interval.end - interval.start > MAX_INTERVAL:
            return refused(f"interval {k} lasts {interval.end - interval.start}, more than {MAX_INTERVAL}")
        watts = (interval.power_w, interval.target_w, interval.export_cap_w, interval.import_cap_w)
        if any(w is not None and abs(w) > MAX_W for w in watts):
            return refused(f"interval {k} asks for more than {MAX_W} W")
    if intervals[-1].end - intervals[0].start > MAX_EVENT:
        return refused(f"longer than {MAX_EVENT}: not a DR event this aggregator dispatches")
    return plan if intervals == plan.intervals else replace(plan, intervals=intervals)


def no_import_note(name: str, limit_w: int) -> str:
    """Why an import limit below 0 is held at 0 (no import) rather than dispatched as the export it implies: a limit
    is a ceiling on what the portfolio draws, not a dispatch. Taken below 0 it would have the fleet discharge its cars
    on a message meant to cap load (a sign or unit slip at the utility's end does exactly that), and the export cap
    a negative import cap would set binds every dispatch while it lasts. Held at 0 the fleet does the part it can
    without discharging (it stops drawing); export is asked for with ``DISPATCH_SETPOINT`` (2030.5 ``opModFixedW``),
    which it dispatches. The event is still answered optIn, its status reason saying so."""
    return f"{name} {limit_w} W below 0: held at 0 W (no import); an import limit never commands export"


#: What a malformed object from a server raises while it is read (a string or NaN value, ``values: []``, a
#: dateTime or duration past year 9999...): that object is refused with the reason, the others carry on.
MALFORMED: tuple[type[Exception], ...] = (KeyError, ValueError, TypeError, IndexError, OverflowError, AttributeError)
MALFORMED_REASON = "malformed"


def malformed_plan(ref: str, modification: int, exc: BaseException, *, what: str = "event") -> EventPlan:
    """A malformed event as a refused plan, its reason saying what was wrong (a one-second span from now)."""
    now = datetime.now(UTC)
    reason = f"{MALFORMED_REASON} {what}: {type(exc).__name__}: {exc}"[:500]
    return EventPlan(ref, modification, "invalid", [Interval(now, now + timedelta(seconds=1), 0)], reason)


def finite(value: Any) -> Any:
    """``value`` as JSON PostgreSQL stores (NaN and Infinity, which Python's JSON parser accepts, as strings)."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _scale(signal: dict[str, Any]) -> float:
    measurement = signal.get("measurement") or {}
    scale = measurement.get("scale") if isinstance(measurement, dict) else getattr(measurement, "scale", None)
    return SCALES.get(scale or "k", 1e3)  # LOAD_DISPATCH is in kW when no itemBase says otherwise


def openadr2_plan(event: dict[str, Any], *, level_step_w: int = 0) -> EventPlan:
    """The plan of an openleadr-parsed 2.0b event (its first signal of a kind dispatched here), within bounds."""
    return bounded(_openadr2_plan(event, level_step_w=level_step_w))


def _openadr2_plan(event: dict[str, Any], *, level_step_w: int) -> EventPlan:
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
        if duration <= timedelta(0):
            raise ValueError(f"an interval of duration {duration}")
        value = number(item.get("signal_payload", 0), name)
        power = -value * _scale(chosen) if name == "LOAD_DISPATCH" else value * level_step_w
        intervals.append(Interval(at, at + duration, round(power)))
        at += duration
    if not intervals:
        return EventPlan(ref, modification, label, [Interval(start, end, 0)], "the signal has no intervals")
    refusal = "" if any(i.power_w > 0 for i in intervals) else "asks for no load reduction (nothing to dispatch)"
    return EventPlan(ref, modification, label, intervals, refusal, cancelled)


# --- OpenADR 3.0 -------------------------------------------------------------------------------------------------

UNITS_W = {"W": 1.0, "KW": 1e3, "MW": 1e6}
LIMITS = ("IMPORT_CAPACITY_LIMIT", "DISPATCH_SETPOINT", "EXPORT_CAPACITY_LIMIT")
NOT_DISPATCHED = {
    "PRICE": "prices are not dispatched here (the fleet's schedule follows its own markets)",
}
_DURATION = re.compile(
    r"^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def iso_duration(text: str) -> timedelta:
    """An ISO 8601 duration of the OpenAPI document's ``duration`` pattern (years and months refused: not fixed)."""
    match = _DURATION.match(text or "")
    if match is None:
        raise ValueError(f"duration {text!r} is not ISO 8601")
    sign, years, months, days, unit, hours, minutes, seconds = match.groups()
    if years or months:
        raise ValueError(f"duration {text!r}: years and months have no fixed length")
    total = timedelta(
        days=int(days or 0) * (7 if unit == "W" else 1),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=float(seconds or 0),
    )
    return -total if sign else total


def iso_duration_text(delta: timedelta) -> str:
    return f"PT{delta.total_seconds():g}S"


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"dateTime {text!r} carries no offset")
    return moment.astimezone(UTC)


def openadr3_modification(event: dict[str, Any]) -> int:
    """OpenADR 3 has no modification number: the version is the VTN's ``modificationDateTime`` (s since 2020)."""
    text = event.get("modificationDateTime") or event.get("createdDateTime")
    if not text:
        return 0
    return max(int(_when(str(text)).timestamp()) - 1_577_836_800, 0)


def _units_w(event: dict[str, Any], program: dict[str, Any] | None, payload_type: str) -> float | None:
    for source in (event, program or {}):
        for descriptor in source.get("payloadDescriptors") or []:
            if descriptor.get("payloadType") == payload_type and descriptor.get("units"):
                return UNITS_W.get(str(descriptor["units"]).upper())
    return 1e3  # kW when no descriptor says


def openadr3_plan(event: dict[str, Any], *, program: dict[str, Any] | None = None, level_step_w: int = 0) -> EventPlan:
    """The plan of an OpenADR 3 ``event`` (its first payload of a type dispatched here), within bounds."""
    return bounded(_openadr3_plan(event, program=program, level_step_w=level_step_w))


def _openadr3_plan(event: dict[str, Any], *, program: dict[str, Any] | None, level_step_w: int) -> EventPlan:
    ref, modification = str(event.get("id") or ""), openadr3_modification(event)
    default = event.get("intervalPeriod") or {}
    try:
        spans = _openadr3_spans(event.get("intervals") or [], default)
    except (ValueError, KeyError, TypeError) as exc:
        now = datetime.now(UTC)
        return EventPlan(ref, modification, "invalid", [Interval(now, now + timedelta(seconds=1), 0)], str(exc))
    if not spans:
        now = datetime.now(UTC)
        return EventPlan(ref, modification, "empty", [Interval(now, now + timedelta(seconds=1), 0)], "no intervals")
    types = [str(p.get("type")) for _, _, item in spans for p in item.get("payloads") or []]
    chosen = next((t for t in types if t in LIMITS or t == "SIMPLE"), None)
    start, end = min(b for b, _, _ in spans), max(f for _, f, _ in spans)
    if chosen is None:
        names = ", ".join(sorted(set(types))) or "none"
        reason = next((NOT_DISPATCHED[t] for t in types if t in NOT_DISPATCHED), f"no dispatchable payload ({names})")
        return EventPlan(ref, modification, names[:32], [Interval(start, end, 0)], reason)
    if chosen == "SIMPLE" and level_step_w <= 0:
        return EventPlan(ref, modification, chosen, [Interval(start, end, 0)], "the program sets no W per SIMPLE level")
    if chosen == "SIMPLE":
        intervals = []
        for begin, finish, item in spans:
            value = next((p["values"][0] for p in item.get("payloads") or [] if p.get("type") == chosen), None)
            if value is not None:
                intervals.append(Interval(begin, finish, round(number(value, chosen) * level_step_w)))
        refusal = "" if any(i.dispatched for i in intervals) else "asks for no load reduction (nothing to dispatch)"
        return EventPlan(ref, modification, chosen, intervals or [Interval(start, end, 0)], refusal)
    return _openadr3_limits(ref, modification, spans, event, program, (start, end))


def _openadr3_limits(
    ref: str,
    modification: int,
    spans: list[tuple[datetime, datetime, dict[str, Any]]],
    event: dict[str, Any],
    program: dict[str, Any] | None,
    span: tuple[datetime, datetime],
) -> EventPlan:
    """Import limits and setpoints (a target, and a cap on charging), export limits (a cap on discharge), per
    interval: an interval may carry both limits."""
    found = [t for _, _, item in spans for p in item.get("payloads") or [] if (t := str(p.get("type"))) in LIMITS]
    kind = ",".join(dict.fromkeys(found))[:32]
    refused = [Interval(span[0], span[1], 0)]
    scales = {t: _units_w(event, program, t) for t in set(found)}
    if any(scale is None for scale in scales.values()):
        return EventPlan(ref, modification, kind, refused, f"{kind}: units not W, KW or MW")
    intervals, notes = [], []
    for begin, finish, item in spans:
        values = {str(p.get("type")): p["values"][0] for p in item.get("payloads") or [] if p.get("values")}
        watts = {t: round(number(values[t], t) * (scales[t] or 1.0)) for t in LIMITS if t in values}
        if watts.get("EXPORT_CAPACITY_LIMIT", 0) < 0:
            return EventPlan(ref, modification, kind, refused, "EXPORT_CAPACITY_LIMIT below 0 W (no export is 0)")
        if watts.get("IMPORT_CAPACITY_LIMIT", 0) < 0:
            notes.append(no_import_note("IMPORT_CAPACITY_LIMIT", watts["IMPORT_CAPACITY_LIMIT"]))
            watts["IMPORT_CAPACITY_LIMIT"] = 0
        target = watts.get("IMPORT_CAPACITY_LIMIT", watts.get("DISPATCH_SETPOINT"))
        if target is not None or "EXPORT_CAPACITY_LIMIT" in watts:
            intervals.append(Interval(begin, finish, 0, target, watts.get("EXPORT_CAPACITY_LIMIT"),
                                      watts.get("IMPORT_CAPACITY_LIMIT")))  # fmt: skip
    limit = next((i.target_w if i.target_w is not None else i.export_cap_w for i in intervals), None)
    refusal = "" if any(i.dispatched for i in intervals) else "asks for no load reduction (nothing to dispatch)"
    return EventPlan(ref, modification, kind, intervals or refused, refusal, limit_w=limit, note="; ".join(notes[:1]))


def _openadr3_spans(
    intervals: list[dict[str, Any]], default: dict[str, Any]
) -> list[tuple[datetime, datetime, dict[str, Any]]]:
    """Each interval's [start, end): its own intervalPeriod, else the event's, intervals following one another."""
    spans = []
    at = _when(default["start"]) if default.get("start") else None
    for item in intervals:
        period = item.get("intervalPeriod") or {}
        begin = _when(period["start"]) if period.get("start") else at
        duration = iso_duration(period.get("duration") or default.get("duration") or "PT0S")
        if begin is None:
            raise ValueError("an interval without a start (no intervalPeriod)")
        if duration <= timedelta(0):
            raise ValueError("an open-ended interval (duration PT0S) is not a DR event dispatched here")
        spans.append((begin, begin + duration, item))
        at = begin + duration
    return spans


# --- IEEE 2030.5 / CSIP ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DerControl:
    """The parts of a 2030.5 ``DERControl`` acted on (``modes``: DERControlBase's elements by name, W or %x100)."""

    mrid: str
    version: int  # EventStatus dateTime (or creationTime), epoch s
    start: datetime
    duration_s: int
    status: int  # EventStatus currentStatus: 0 scheduled, 1 active, 2 cancelled, 3 cancelled w/ random, 4 superseded
    modes: dict[str, int | bool]
    reply_to: str = ""  # where Responses go (the control's replyTo), "" when none is asked
    response_required: int = 0  # responseRequired bits

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=max(self.duration_s, 0))


INVALID_CONTROL = "a control without a duration"


def csip_plan(control: DerControl, *, set_max_w: int) -> EventPlan:
    """The plan of a 2030.5 DERControl, within bounds."""
    return bounded(_csip_plan(control, set_max_w=set_max_w))


def _csip_plan(control: DerControl, *, set_max_w: int) -> EventPlan:
    version = max(control.version - 1_577_836_800, 0)
    span = [Interval(control.start, control.start + timedelta(seconds=max(control.duration_s, 1)), 0)]
    kind = ",".join(sorted(control.modes))[:32] or "none"
    cancelled = control.status in (2, 3, 4)
    if control.duration_s <= 0:
        return EventPlan(control.mrid, version, kind, span, INVALID_CONTROL, cancelled)
    modes = control.modes
    target: int | None = None
    import_cap = int(modes["opModImpLimW"]) if "opModImpLimW" in modes else None
    export_cap = int(modes["opModExpLimW"]) if "opModExpLimW" in modes else None
    note = ""
    if import_cap is not None and import_cap < 0:  # held at 0, never export (no_import_note says why)
        note, import_cap = no_import_note("opModImpLimW", import_cap), 0
    if export_cap is not None and export_cap < 0:
        return EventPlan(control.mrid, version, kind, span, "opModExpLimW below 0 W (no export is 0)", cancelled)
    if "opModFixedW" in modes:
        if set_max_w <= 0:
            return EventPlan(control.mrid, version, kind, span, "opModFixedW: no discharge rating (no car plugged in)")
        target = -round(int(modes["opModFixedW"]) * set_max_w / 10_000)
    elif import_cap is not None:
        target = import_cap
    elif modes.get("opModConnect") is False:
        target = 0
    if target is None and export_cap is None:
        return EventPlan(control.mrid, version, kind, span, f"no mode dispatched here ({kind})", cancelled)
    interval = Interval(span[0].start, span[0].end, 0, target, export_cap, import_cap)
    limit = target if target is not None else export_cap
    return EventPlan(control.mrid, version, kind, [interval], "", cancelled, limit_w=limit, note=note)
