"""OpenADR 2.0b events as the aggregator acts on them: W of load reduction per interval, by the 2.0b profile's
signal names (values worked out by hand from the event)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from markets.regulation.services import RESERVE_MAX
from vpp.utility.signals import (
    MAX_INTERVAL,
    DerControl,
    Interval,
    csip_plan,
    iso_duration,
    openadr2_plan,
    openadr3_plan,
)

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


# --- OpenADR 3 ----------------------------------------------------------------------------------------------------


def _event3(payload_type: str, values: list[float], *, units: str | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "event-7",
        "programID": "program-1",
        "modificationDateTime": "2026-07-01T17:00:00Z",
        "intervalPeriod": {"start": "2026-07-01T18:00:00Z", "duration": "PT15M"},
        "intervals": [{"id": i, "payloads": [{"type": payload_type, "values": [v]}]} for i, v in enumerate(values)],
        **extra,
    }
    if units is not None:
        event["payloadDescriptors"] = [{"payloadType": payload_type, "units": units}]
    return event


def test_an_import_limit_is_a_target_and_a_cap_per_interval_in_kw_unless_the_descriptor_says_otherwise() -> None:
    plan = openadr3_plan(_event3("IMPORT_CAPACITY_LIMIT", [40.0, 25.5]))
    assert plan.intervals == [
        Interval(T0, T0 + timedelta(minutes=15), 0, 40_000, import_cap_w=40_000),
        Interval(T0 + timedelta(minutes=15), T0 + timedelta(minutes=30), 0, 25_500, import_cap_w=25_500),
    ]
    assert (plan.refusal, plan.limit_w, plan.kind) == ("", 40_000, "IMPORT_CAPACITY_LIMIT")
    setpoint = openadr3_plan(_event3("DISPATCH_SETPOINT", [900.0], units="W")).intervals[0]
    assert (setpoint.target_w, setpoint.import_cap_w) == (900, None)  # a setpoint is no ceiling


def test_an_export_limit_is_a_cap_on_discharge_alone_or_beside_an_import_limit() -> None:
    # 5 kW of export at most: no target (nothing is deployed), a cap
    plan = openadr3_plan(_event3("EXPORT_CAPACITY_LIMIT", [5.0]))
    assert plan.intervals == [Interval(T0, T0 + timedelta(minutes=15), 0, None, export_cap_w=5_000)]
    assert (plan.refusal, plan.kind, plan.limit_w) == ("", "EXPORT_CAPACITY_LIMIT", 5_000)
    # Both limits in one interval (MW): a target and both caps
    both = _event3("IMPORT_CAPACITY_LIMIT", [0.2], units="MW")
    both["intervals"][0]["payloads"].append({"type": "EXPORT_CAPACITY_LIMIT", "values": [0.0]})
    both["payloadDescriptors"].append({"payloadType": "EXPORT_CAPACITY_LIMIT", "units": "MW"})
    assert openadr3_plan(both).intervals == [Interval(T0, T0 + timedelta(minutes=15), 0, 200_000, 0, 200_000)]
    # A negative export limit means nothing the fleet can do: refused
    assert openadr3_plan(_event3("EXPORT_CAPACITY_LIMIT", [-1.0])).refusal.startswith("EXPORT_CAPACITY_LIMIT below 0")


def test_its_version_is_the_vtns_modification_time() -> None:
    # 2026-07-01T17:00:00Z is 1,782,925,200 s after 1970; 2020-01-01 is 1,577,836,800 s
    assert openadr3_plan(_event3("IMPORT_CAPACITY_LIMIT", [1.0])).modification == 205_088_400


def test_an_interval_with_its_own_period_starts_then() -> None:
    event = _event3("IMPORT_CAPACITY_LIMIT", [10.0])
    event["intervals"][0]["intervalPeriod"] = {"start": "2026-07-01T19:00:00+01:00", "duration": "PT1H"}
    (interval,) = openadr3_plan(event).intervals
    assert (interval.start, interval.end) == (T0, T0 + timedelta(hours=1))


def test_it_refuses_open_ended_events_and_prices_with_the_reason() -> None:
    open_ended = _event3("IMPORT_CAPACITY_LIMIT", [10.0])
    open_ended["intervalPeriod"]["duration"] = "PT0S"
    assert "open-ended" in openadr3_plan(open_ended).refusal
    assert openadr3_plan(_event3("PRICE", [0.3])).refusal.startswith("prices are not dispatched")
    assert openadr3_plan(_event3("IMPORT_CAPACITY_LIMIT", [5.0], units="KWH")).refusal.endswith("not W, KW or MW")


def test_iso_durations_of_the_documents_pattern() -> None:
    assert iso_duration("PT1H30M") == timedelta(minutes=90)
    assert iso_duration("P1DT0.5S") == timedelta(days=1, seconds=0.5)
    assert iso_duration("P2W") == timedelta(days=14)
    with pytest.raises(ValueError, match="no fixed length"):
        iso_duration("P1M")


# --- IEEE 2030.5 --------------------------------------------------------------------------------------------------


def _control(**modes: int | bool) -> DerControl:
    return DerControl("C0FFEE", 1_782_925_200, T0, 900, 0, modes)


def test_a_fixed_w_control_is_a_target_of_its_share_of_the_discharge_rating() -> None:
    # opModFixedW 2,500 = 25.00 % of setMaxW 40,000 W delivered: a net import of -10,000 W
    plan = csip_plan(_control(opModFixedW=2_500), set_max_w=40_000)
    assert plan.intervals == [Interval(T0, T0 + timedelta(minutes=15), 0, -10_000)]
    assert (plan.refusal, plan.kind, plan.modification) == ("", "opModFixedW", 205_088_400)
    assert csip_plan(_control(opModFixedW=2_500), set_max_w=0).refusal.startswith("opModFixedW: no discharge rating")


def test_an_import_limit_and_a_disconnect_are_targets_an_export_limit_a_cap() -> None:
    span = (T0, T0 + timedelta(minutes=15))
    assert csip_plan(_control(opModImpLimW=3_000), set_max_w=0).intervals == [Interval(*span, 0, 3_000, None, 3_000)]
    assert csip_plan(_control(opModConnect=False), set_max_w=0).intervals[0].target_w == 0
    assert csip_plan(_control(opModConnect=True), set_max_w=0).refusal == "no mode dispatched here (opModConnect)"
    exported = csip_plan(_control(opModExpLimW=5_000), set_max_w=0)
    assert (exported.intervals, exported.refusal) == ([Interval(*span, 0, None, 5_000)], "")
    both = csip_plan(_control(opModImpLimW=3_000, opModExpLimW=0), set_max_w=0)
    assert both.intervals == [Interval(*span, 0, 3_000, 0, 3_000)]
    assert csip_plan(_control(opModExpLimW=-1), set_max_w=0).refusal == "opModExpLimW below 0 W (no export is 0)"


# --- bounds on what one event may ask ------------------------------------------------------------------------------


def _at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def test_intervals_listed_out_of_order_are_dispatched_in_time_order() -> None:
    # Given a VTN listing the 18:15 interval (20 kW) before the 18:00 one (10 kW)
    event = _event3("DISPATCH_SETPOINT", [-20.0, -10.0])
    event["intervals"][0]["intervalPeriod"] = {"start": _at(15), "duration": "PT15M"}
    event["intervals"][1]["intervalPeriod"] = {"start": _at(0), "duration": "PT15M"}
    # When it is read
    plan = openadr3_plan(event)
    # Then each interval keeps its own value, in time order, and the event spans 18:00-18:30
    assert [(i.start, i.target_w) for i in plan.intervals] == [(T0, -10_000), (T0 + timedelta(minutes=15), -20_000)]
    assert (plan.start, plan.end, plan.refusal) == (T0, T0 + timedelta(minutes=30), "")


def test_it_refuses_overlapping_intervals_too_long_an_event_or_interval_with_the_reason() -> None:
    overlapping = _event3("DISPATCH_SETPOINT", [-20.0, -10.0])
    overlapping["intervals"][0]["intervalPeriod"] = {"start": _at(0), "duration": "PT30M"}
    overlapping["intervals"][1]["intervalPeriod"] = {"start": _at(15), "duration": "PT30M"}
    assert openadr3_plan(overlapping).refusal == "intervals 0 and 1 overlap"
    # An interval that deploys reserve lasts at most a reserve deployment's maximum (4 h)
    long_interval = _event3("DISPATCH_SETPOINT", [-20.0], intervalPeriod={"start": _at(0), "duration": "PT5H"})
    assert openadr3_plan(long_interval).refusal == "interval 0 lasts 5:00:00, more than 4:00:00"
    assert MAX_INTERVAL == RESERVE_MAX
    # The whole event at most a day, however its intervals are laid out
    spread = _event3("DISPATCH_SETPOINT", [-20.0, -10.0])
    spread["intervals"][1]["intervalPeriod"] = {"start": _at(25 * 60), "duration": "PT15M"}
    assert openadr3_plan(spread).refusal.startswith("longer than 1 day")
    assert openadr3_plan(spread).intervals == [Interval(T0, T0 + timedelta(hours=25, minutes=15), 0)]


@pytest.mark.parametrize(
    "plan",
    [
        lambda: openadr3_plan(_event3("DISPATCH_SETPOINT", [-2_000.0], units="MW")),
        lambda: openadr3_plan(_event3("EXPORT_CAPACITY_LIMIT", [2e6])),
        lambda: openadr2_plan(_event("LOAD_DISPATCH", "delta", [-2e6])),
        lambda: csip_plan(_control(opModExpLimW=32_767_000_000), set_max_w=0),
    ],
)
def test_it_refuses_more_than_a_gigawatt_with_the_reason(plan: Any) -> None:
    assert plan().refusal == "interval 0 asks for more than 1000000000 W"


@pytest.mark.parametrize("value", ["5", True, float("nan"), float("inf"), None])
def test_a_value_that_is_not_a_finite_number_is_malformed(value: Any) -> None:
    with pytest.raises(ValueError, match="DISPATCH_SETPOINT"):
        openadr3_plan(_event3("DISPATCH_SETPOINT", [value]))
    with pytest.raises(ValueError, match="LOAD_DISPATCH"):
        openadr2_plan(_event("LOAD_DISPATCH", "delta", [value]))


# --- an import limit never commands export -------------------------------------------------------------------------


def test_an_import_limit_below_0_is_held_at_0_and_the_note_says_so() -> None:
    # Given import limits of -5 kW (OpenADR 3) and -5,000 W (2030.5): export, were they taken as targets
    span = (T0, T0 + timedelta(minutes=15))
    for plan in (
        openadr3_plan(_event3("IMPORT_CAPACITY_LIMIT", [-5.0])),
        csip_plan(_control(opModImpLimW=-5_000), set_max_w=40_000),
    ):
        # Then each is a target and a cap of 0 W (no import, no export), answered optIn, with the note kept
        assert plan.intervals == [Interval(*span, 0, 0, None, 0)]
        assert (plan.refusal, plan.limit_w) == ("", 0)
        assert plan.note.endswith("-5000 W below 0: held at 0 W (no import); an import limit never commands export")
    # And beside it, an export limit still caps, and a setpoint below 0 is export asked for (dispatched as such)
    both = _event3("IMPORT_CAPACITY_LIMIT", [-5.0])
    both["intervals"][0]["payloads"].append({"type": "EXPORT_CAPACITY_LIMIT", "values": [2.0]})
    assert openadr3_plan(both).intervals == [Interval(*span, 0, 0, 2_000, 0)]
    assert openadr3_plan(_event3("DISPATCH_SETPOINT", [-5.0])).intervals == [Interval(*span, 0, -5_000)]
