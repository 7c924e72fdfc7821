"""SetDERControl protection settings: only inside IEEE 1547-2018's ranges of allowable settings, never disabling a trip.

The requests are OCPP 2.1 SetDERControl messages from the ``ocpp`` library (schema-validated on both ends); the
ranges are the standard's (Tables 11-13 and 18 for the must-trips, Table 4 enter service, Table 24 droop).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from ocpp.v21 import call as c21

from edge_agent.protection import TripSetting
from tests.edge_agent.csms import RecordingCsms


def must_trip(control_type: str, points: list[tuple[float, float]], y_unit: str | None = None) -> Any:
    unit = y_unit or ("PctEffectiveV" if control_type[1] == "V" else "Not_Applicable")
    return c21.SetDERControl(
        is_default=True,
        control_id=f"{control_type}-1",
        control_type=control_type,
        curve={"priority": 0, "yUnit": unit, "curveData": [{"x": x, "y": y} for x, y in points]},
    )


def trips(agent: Any) -> dict[str, tuple[float, float]]:
    return {t.name: (round(t.threshold, 6), t.clearing_s) for t in agent.station.protection.trips}


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("code") == "PROTECTION_SETTING_REFUSED"
    ]


@pytest.mark.parametrize(
    ("control_type", "points", "expected"),
    [
        ("HVMustTrip", [(0.16, 120.0), (5.0, 112.0)], {"OV2": (1.2, 0.16), "OV1": (1.12, 5.0)}),
        ("LVMustTrip", [(1.0, 40.0), (15.0, 80.0)], {"UV2": (0.4, 1.0), "UV1": (0.8, 15.0)}),
        ("HFMustTrip", [(0.5, 63.0), (200.0, 61.5)], {"OF2": (63.0, 0.5), "OF1": (61.5, 200.0)}),
        ("LFMustTrip", [(0.3, 56.0), (240.0, 58.8)], {"UF2": (56.0, 0.3), "UF1": (58.8, 240.0)}),
    ],
)
async def test_it_accepts_and_applies_a_must_trip_curve_inside_the_allowed_ranges(
    csms: RecordingCsms, make_agent: Any, control_type: str, points: list[tuple[float, float]], expected: Any
) -> None:
    # given an agent of Category II
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    # when the CSMS sends a curve whose every stage lies in the category's ranges
    result = await csms.call("edge-1", must_trip(control_type, points))
    # then it is accepted and the stages are in force with the new values
    assert result.status == "Accepted"
    now = trips(agent)
    for name, value in expected.items():
        assert now[name] == value
    assert len(now) == 8  # every stage of every family still there
    assert csms.of("SecurityEventNotification") == []


@pytest.mark.parametrize(
    ("case", "control_type", "points"),
    [
        ("voltage above the OV1 range", "HVMustTrip", [(0.16, 120.0), (2.0, 125.0)]),
        ("OV2 moved off its fixed 1.20 pu", "HVMustTrip", [(0.16, 130.0), (2.0, 110.0)]),
        ("UV1 voltage above 0.88 pu", "LVMustTrip", [(0.16, 45.0), (10.0, 95.0)]),
        ("frequency below the OF2 range", "HFMustTrip", [(0.16, 61.5), (300.0, 61.2)]),
        ("frequency far out (the old +-20 % check let 70 Hz through)", "HFMustTrip", [(0.16, 70.0), (300.0, 61.2)]),
        ("UF1 below 50 Hz", "LFMustTrip", [(300.0, 49.0), (0.16, 48.0)]),
        ("OV1 clearing time beyond 13 s", "HVMustTrip", [(0.16, 120.0), (60.0, 110.0)]),
        ("UV2 clearing time beyond 2 s", "LVMustTrip", [(5.0, 45.0), (10.0, 70.0)]),
        ("OF1 clearing time beyond 1000 s", "HFMustTrip", [(0.16, 62.0), (100_000.0, 61.2)]),
        ("a missing trip: OV2 left out", "HVMustTrip", [(2.0, 110.0)]),
        ("a missing trip: UF2 left out", "LFMustTrip", [(300.0, 58.5)]),
        ("an extra point", "HVMustTrip", [(0.16, 120.0), (2.0, 110.0), (13.0, 110.0)]),
        ("a voltage curve in % of max power", "HVMustTrip", [(0.16, 120.0), (2.0, 110.0)]),
    ],
)
async def test_it_refuses_a_must_trip_curve_outside_ieee_1547_and_keeps_the_previous_protection(
    csms: RecordingCsms,
    make_agent: Any,
    caplog: pytest.LogCaptureFixture,
    case: str,
    control_type: str,
    points: list[tuple[float, float]],
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.session")
    # given an agent of Category II with its default trips in force
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    before = trips(agent)
    # when the CSMS sends a curve that leaves the ranges of allowable settings
    y_unit = "PctMaxW" if "% of max power" in case else None
    result = await csms.call("edge-1", must_trip(control_type, points, y_unit))
    # then it is Rejected, with the reason
    assert result.status == "Rejected", case
    assert result.status_info["reason_code"] == "InvalidValue"
    # and reported to the CSMS as a security event, and in the session log
    await csms.wait_for(lambda: len(csms.of("SecurityEventNotification")) == 1)
    event = csms.of("SecurityEventNotification")[0]
    assert event["type"] == "ProtectionSettingRefused"
    assert control_type in event["tech_info"]
    assert [line["control_type"] for line in refusal_lines(caplog)] == [control_type]
    # and the protection in force before it is still in force
    assert trips(agent) == before


async def test_a_refused_curve_leaves_the_accepted_one_in_force_and_it_still_trips(
    csms: RecordingCsms, make_agent: Any
) -> None:
    # given an accepted over-voltage curve (OV1 at 1.12 pu in 5 s)
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    ok = await csms.call("edge-1", must_trip("HVMustTrip", [(0.16, 120.0), (5.0, 112.0)]))
    assert ok.status == "Accepted"
    # when a curve without OV2 arrives
    refused = await csms.call("edge-1", must_trip("HVMustTrip", [(13.0, 120.0)]))
    assert refused.status == "Rejected"
    # then OV2 and the accepted OV1 are still in force: 1.25 pu trips OV2 at once, 1.15 pu trips OV1
    over: list[TripSetting] = [t for t in agent.station.protection.trips if t.name in ("OV2", "OV1")]
    assert {(t.name, t.threshold, t.clearing_s) for t in over} == {("OV2", 1.2, 0.16), ("OV1", 1.12, 5.0)}
    assert any(t.violated(60.0, 1.25) and t.clearing_s == 0.16 for t in over)
    assert any(t.violated(60.0, 1.15) and t.name == "OV1" for t in over)


async def test_category_iii_allows_the_longer_under_voltage_clearing_times_category_ii_refuses(
    csms: RecordingCsms, make_agent: Any
) -> None:
    # UV1 at 0.88 pu cleared in 30 s is Category III's range (21-50 s), outside Category II's (2-21 s)
    curve = must_trip("LVMustTrip", [(2.0, 50.0), (30.0, 88.0)])
    cat3 = await make_agent(csms, "edge-1", protection_category="III")
    cat2 = await make_agent(csms, "edge-2")
    await csms.wait_for(lambda: cat3.station.link.connected and cat2.station.link.connected)
    assert (await csms.call("edge-1", curve)).status == "Accepted"
    assert trips(cat3)["UV1"] == (0.88, 30.0)
    assert (await csms.call("edge-2", curve)).status == "Rejected"


@pytest.mark.parametrize(
    ("case", "control_type", "block", "value", "accepted"),
    [
        ("enter service inside the ranges", "EnterService", "enter_service", {"lowVoltage": 0.95, "highVoltage": 1.06,
         "lowFreq": 59.9, "highFreq": 61.0, "delay": 600, "rampRate": 1000}, True),
        ("enter service up to 65 Hz", "EnterService", "enter_service", {"lowVoltage": 0.917, "highVoltage": 1.05,
         "lowFreq": 59.5, "highFreq": 65.0}, False),
        ("enter service from 0.5 pu", "EnterService", "enter_service", {"lowVoltage": 50, "highVoltage": 105,
         "lowFreq": 59.5, "highFreq": 60.1}, False),
        ("droop inside the ranges", "FreqDroop", "freq_droop", {"overFreq": 60.036, "underFreq": 59.964,
         "overDroop": 0.05, "underDroop": 0.05, "responseTime": 5}, True),
        ("droop with a 5 Hz deadband", "FreqDroop", "freq_droop", {"overFreq": 65.0, "underFreq": 55.0,
         "overDroop": 0.05, "underDroop": 0.05, "responseTime": 5}, False),
        ("droop of 50 %", "FreqDroop", "freq_droop", {"overFreq": 60.036, "underFreq": 59.964,
         "overDroop": 50, "underDroop": 50, "responseTime": 5}, False),
        ("droop responding in 60 s", "FreqDroop", "freq_droop", {"overFreq": 60.036, "underFreq": 59.964,
         "overDroop": 0.05, "underDroop": 0.05, "responseTime": 60}, False),
    ],
)  # fmt: skip
async def test_enter_service_and_droop_settings_are_bounded_too(
    csms: RecordingCsms, make_agent: Any, case: str, control_type: str, block: str, value: Any, accepted: bool
) -> None:
    agent = await make_agent(csms)
    await csms.wait_for(lambda: agent.station.link.connected)
    st = agent.station
    before = (st.protection.enter_service, st.droop)
    result = await csms.call(
        "edge-1",
        c21.SetDERControl(
            is_default=True, control_id="c-1", control_type=control_type, **{block: {"priority": 0, **value}}
        ),
    )
    if accepted:
        assert result.status == "Accepted", case
        assert (st.protection.enter_service, st.droop) != before
    else:
        assert result.status == "Rejected", case
        assert (st.protection.enter_service, st.droop) == before
        await csms.wait_for(lambda: len(csms.of("SecurityEventNotification")) == 1)
        assert json.dumps(csms.of("SecurityEventNotification")[0]).count("ProtectionSettingRefused") == 1
