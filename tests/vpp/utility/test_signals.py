"""OpenADR 2.0b events as the aggregator acts on them: W of load reduction per interval, by the 2.0b profile's
signal names (values worked out by hand from the event)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from vpp.utility.signals import Interval, openadr2_plan

T0 = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)


def _event(name: str, kind: str, payloads: list[float], *, scale: str | None = None, **descriptor: Any) -> dict:
    signal: dict[str, Any] = {
        "signal_name": name,
        "signal_type": kind,
        "intervals": [{"duration": timedelta(minutes=15), "signal_payload": p} for p in payloads],
    }
    if scale is not None:
        signal["measurement"] = {"scale": scale}
    return {
        "event_descriptor": {"event_id": "ev-1", "modification_number": 2, "event_status": "far", **descriptor},
        "active_period": {"dtstart": T0, "duration": timedelta(minutes=15 * len(payloads))},
        "event_signals": [signal],
    }


def test_a_load_dispatch_delta_in_kw_is_w_of_reduction_per_interval() -> None:
    plan = openadr2_plan(_event("LOAD_DISPATCH", "delta", [-20.0, -12.5]))
    assert plan.intervals == [
        Interval(T0, T0 + timedelta(minutes=15), 20_000),
        Interval(T0 + timedelta(minutes=15), T0 + timedelta(minutes=30), 12_500),
    ]
    assert (plan.refusal, plan.modification, plan.power_w) == ("", 2, 20_000)


def test_the_measurements_scale_is_applied() -> None:
    assert openadr2_plan(_event("LOAD_DISPATCH", "delta", [-0.5], scale="M")).power_w == 500_000
    assert openadr2_plan(_event("LOAD_DISPATCH", "delta", [-900.0], scale="none")).power_w == 900


def test_simple_levels_are_the_programs_w_per_level_and_refused_without_one() -> None:
    assert openadr2_plan(_event("SIMPLE", "level", [2.0]), level_step_w=15_000).power_w == 30_000
    assert openadr2_plan(_event("SIMPLE", "level", [2.0])).refusal == "the program sets no W per SIMPLE level"


def test_it_refuses_what_it_does_not_dispatch_with_the_reason() -> None:
    assert openadr2_plan(_event("LOAD_DISPATCH", "setpoint", [40.0])).refusal == "LOAD_DISPATCH setpoint not dispatched"
    assert openadr2_plan(_event("LOAD_DISPATCH", "delta", [5.0])).refusal == (
        "asks for no load reduction (nothing to dispatch)"
    )
    assert (
        openadr2_plan(_event("ELECTRICITY_PRICE", "price", [0.3])).refusal
        == "no dispatchable signal (ELECTRICITY_PRICE)"
    )


def test_a_cancelled_event_is_marked_so() -> None:
    assert openadr2_plan(_event("LOAD_DISPATCH", "delta", [-1.0], event_status="cancelled")).cancelled
