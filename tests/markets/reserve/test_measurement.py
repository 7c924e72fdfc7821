"""Synchronized reserve event performance from fleet power on 10-s rows (PJM: full response in 10 min, held)."""

from __future__ import annotations

import numpy as np
import pytest

from markets.reserve.measurement import event_response, event_rows


def _power(rows: int, before_w: float, after_w: float, from_row: int) -> np.ndarray:
    power = np.full(rows, before_w)
    power[from_row:] = after_w
    return power


def test_a_fleet_that_reaches_and_holds_its_mw_is_credited_in_full():
    # Given a 20-min event asking 100 kW of a fleet charging at 70 kW, which goes to -30 kW after 20 s
    power = _power(event_rows(1200), 70_000, -30_000, 2)
    # When it is measured
    measured = event_response(power, duration_s=1200, assigned_w=100_000)
    # Then the response is 100 kW at 10 min and over the rest: credited in full, no shortfall
    assert (measured.baseline_w, measured.response_10min_w, measured.sustained_w) == (70_000, 100_000, 100_000)
    assert (measured.credited_w, measured.shortfall_w) == (100_000, 0)


def test_a_fleet_that_drops_its_response_before_the_end_is_credited_the_lower_figure():
    # Given the same event, full response from 20 s, but back to charging at 70 kW for the last 5 minutes
    power = _power(event_rows(1200), 70_000, -30_000, 2)
    power[90:] = 70_000  # rows 90..119: 21:20 to the end
    measured = event_response(power, duration_s=1200, assigned_w=100_000)
    # Then the 10-min response is 100 kW, but over rows 60..119 it averages 100 kW x 30/60 = 50 kW: credited 50 kW
    assert (measured.response_10min_w, measured.sustained_w) == (100_000, 50_000)
    assert (measured.credited_w, measured.shortfall_w) == (50_000, 50_000)


def test_a_response_that_comes_after_10_minutes_is_short_at_10_minutes():
    # Given a fleet that only responds from the 11th minute
    power = _power(event_rows(1200), 70_000, -30_000, 66)
    measured = event_response(power, duration_s=1200, assigned_w=100_000)
    # Then at 10 minutes nothing was there: credited 0, the whole 100 kW short
    assert measured.response_10min_w == 0
    assert (measured.credited_w, measured.shortfall_w) == (0, 100_000)


def test_more_than_assigned_is_credited_as_assigned():
    power = _power(event_rows(900), 70_000, -60_000, 1)
    measured = event_response(power, duration_s=900, assigned_w=100_000)
    assert (measured.response_10min_w, measured.credited_w, measured.shortfall_w) == (130_000, 100_000, 0)


def test_an_event_shorter_than_10_minutes_is_measured_at_its_last_row():
    # Given a 5-min event (rows 0..29), the fleet 60 kW lower from row 3
    power = _power(event_rows(300), 50_000, -10_000, 3)
    measured = event_response(power, duration_s=300, assigned_w=80_000)
    assert event_rows(300) == 30
    assert (measured.response_10min_w, measured.sustained_w, measured.shortfall_w) == (60_000, None, 20_000)


def test_it_refuses_a_trace_shorter_than_the_event():
    with pytest.raises(ValueError, match="needs 120 rows"):
        event_response(np.zeros(60), duration_s=1200, assigned_w=1)
