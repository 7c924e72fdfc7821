"""The car behind ISO 15118-20 as the station sees it: the charge-loop timing that sets the fail-safe's lead."""

from __future__ import annotations

import pytest

from edge_agent.secc.car import LoopTiming, power_limit


def test_the_failsafe_lead_is_two_of_the_cars_longest_recent_charge_loops() -> None:
    # given a car whose charge-loop requests arrive 0.20, 0.30 and 0.25 s apart
    timing = LoopTiming()
    for at in (100.0, 100.2, 100.5, 100.75):
        lead = timing.request(at)
    # then a command needs up to two of the longest (0.3 s) to reach the car and come back as its report
    assert lead == pytest.approx(0.6)


def test_before_two_requests_the_lead_assumes_a_loop_as_long_as_the_response_limit() -> None:
    # given a car whose first charge-loop request has just arrived
    timing = LoopTiming()
    # then the lead assumes 250 ms loops (ISO 15118-20's response limit): 0.5 s
    assert timing.request(5.0) == pytest.approx(0.5)


def test_a_long_pause_ages_out_after_twenty_requests() -> None:
    # given one 1 s gap followed by 20 loops of 0.1 s
    timing = LoopTiming()
    times = [0.0, 1.0] + [1.0 + 0.1 * i for i in range(1, 21)]
    leads = [timing.request(t) for t in times]
    # then the lead is 2 s while the gap is among the last 20 periods, and 0.2 s once it is not
    assert leads[1] == pytest.approx(2.0)
    assert leads[-2] == pytest.approx(2.0)
    assert leads[-1] == pytest.approx(0.2)


def test_a_car_reporting_zero_discharge_power_allows_no_discharge_from_then_on():
    # Given a car that allowed 11 kW of discharge
    # When it reports 0 W as its maximum discharge power, then nothing reported, then a limit sent signed
    # Then 0 W is the limit (not "not given"), a message without it keeps 0 W, and a limit is a magnitude
    assert power_limit(0.0, 11_000.0) == 0.0
    assert power_limit(None, 0.0) == 0.0
    assert power_limit(-7_400.0, 0.0) == 7_400.0
