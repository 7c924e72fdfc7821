"""PJM performance score: hand-computed cases and a cell-by-cell loop transcription of the template."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markets.regulation.scoring import (
    HOURLY_ROWS,
    TIE_TOLERANCE,
    ScoringError,
    align_response,
    align_signal,
    mileage,
    performance_score,
    precision_score,
    sample_hold,
    scoring_grid,
    window_details,
)
from markets.regulation.signals import read_signal_csv

REGD_FILE = Path(__file__).resolve().parents[3] / "markets" / "data" / "pjm-regd-test-signal-40min.csv"

# A triangle wave of period 20 samples (200 s) between -10 and +10 MW, steps of 2 MW: every 31-sample window holds
# a corner, so correlation pins down the shift (a straight ramp correlates perfectly at every shift).
TRIANGLE = 10.0 * np.concatenate([np.linspace(-1, 1, 11)[:-1], np.linspace(1, -1, 11)[:-1]])


def triangle(rows: int, offset: int = 0) -> np.ndarray:
    return np.tile(TRIANGLE, rows // TRIANGLE.size + 2)[offset : offset + rows]


# --- the template, transcribed cell by cell with plain loops (the oracle for the vectorised code) ---------------


def template_score(reg: list[float], resp: list[float]) -> tuple[float, float, float]:
    n = len(reg)
    scored = n - 31
    idx = [float(i + 1) for i in range(n)]
    accuracies, delays = [], []
    for e in range(30, scored + 1):
        values = []
        sig_window, x = reg[e - 30 : e + 1], idx[e - 30 : e + 1]
        slope_sig = statistics.linear_regression(x, sig_window).slope
        for k in range(30):
            resp_window = resp[e - 30 + k : e + k + 1]
            slope_resp = statistics.linear_regression(x, resp_window).slope
            if abs(slope_sig) > 0.05 and abs(slope_resp) > 0.05:
                values.append(max(0.0, statistics.correlation(sig_window, resp_window)))
            else:
                values.append(1.0 - abs(slope_sig - slope_resp))
        best = max(values)
        k_star = next(k for k, v in enumerate(values) if v >= best - TIE_TOLERANCE)
        accuracies.append(best)
        delays.append(abs(300 - max(k_star - 1, 0) * 10) / 300)
    mean_abs = sum(abs(r) for r in reg[:scored]) / scored
    precisions = [min(max(1 - abs(resp[i] - reg[i]) / mean_abs, 0.0), 1.0) for i in range(scored)]
    return sum(accuracies) / len(accuracies), sum(delays) / len(delays), sum(precisions) / scored


# --- hand-computed cases -----------------------------------------------------------------------------------------


def test_perfect_tracking_scores_one():
    # given a response equal to the signal over an hourly template
    reg = triangle(HOURLY_ROWS)
    # when scored
    score = performance_score(reg, reg.copy())
    # then every component is 1
    assert (score.accuracy, score.delay, score.precision, score.composite) == pytest.approx((1, 1, 1, 1), abs=1e-12)
    assert score.scored_rows == 360
    assert score.windows == 331
    assert score.passed


def test_a_pure_20_second_lag_costs_10_seconds_of_delay_and_the_precision_hand_computed():
    # given the response is the signal two rows (20 s) late
    wave = triangle(HOURLY_ROWS + 2)
    reg, resp = wave[2:], wave[:-2]
    # when scored
    score = performance_score(reg, resp)
    detail = window_details(reg, resp)
    # then every window finds the lag (k* = 2) and correlates perfectly
    assert set(detail.best_shift.tolist()) == {2}
    assert score.accuracy == pytest.approx(1.0, abs=1e-12)
    # delay: d = max(2 - 1, 0) * 10 = 10 s, so |300 - 10| / 300 = 29/30
    assert score.delay == pytest.approx(29 / 30, abs=1e-12)
    # precision: mean|reg| = 5 MW over whole periods; a 2-row lag errs by 4 MW on 18 rows of 20 and by 0 where the
    # two rows sit either side of a corner, so p = 1 - 4/5 = 0.2 on 18 rows and 1 on 2: (18 * 0.2 + 2) / 20 = 0.28
    assert score.precision == pytest.approx(0.28, abs=1e-12)
    assert score.composite == pytest.approx((1 + 29 / 30 + 0.28) / 3, abs=1e-12)
    assert not score.passed  # 0.7489 < 0.75


def test_a_half_amplitude_response_on_a_steep_ramp_scores_half_precision_only():
    # given a steep ramp 50 -> 100 MW (slope 0.128 MW/row, half of it still > 0.05) and half the response
    reg = 50.0 + 50.0 * np.arange(HOURLY_ROWS) / (HOURLY_ROWS - 1)
    # when scored
    score = performance_score(reg, 0.5 * reg)
    # then correlation is perfect at every shift so k* = 0 (no delay), and p_i = 1 - 0.5 reg_i / mean(reg),
    # never clipped (0.5 * 100 / 75 < 1), whose mean is exactly 1 - 0.5 = 0.5
    assert score.accuracy == pytest.approx(1.0, abs=1e-12)
    assert score.delay == pytest.approx(1.0, abs=1e-12)
    assert score.precision == pytest.approx(0.5, abs=1e-12)
    assert score.composite == pytest.approx(2.5 / 3, abs=1e-12)


def test_a_half_amplitude_response_to_a_triangle_wave_scores_half_precision():
    # given mean|reg| = 5 MW and max |reg| = 10 MW, p_i = 1 - 0.5|reg_i| / 5 stays within [0, 1]: its mean is 0.5
    reg = triangle(HOURLY_ROWS)
    assert precision_score(reg, 0.5 * reg) == pytest.approx(0.5, abs=1e-12)


def test_precision_clips_large_errors_at_zero():
    reg = triangle(HOURLY_ROWS)
    # a response of the opposite sign errs by 2|reg|: rows with |reg| >= 2.5 MW clip to 0
    expected = np.clip(1 - 2 * np.abs(reg[:360]) / 5.0, 0, 1).mean()
    assert precision_score(reg, -reg) == pytest.approx(expected, abs=1e-12)
    assert precision_score(reg, -reg) < 0.3


class TestFlatSignalSlopeRule:
    def test_a_flat_response_to_a_flat_signal_is_accurate_whatever_its_offset(self):
        reg = np.full(HOURLY_ROWS, 0.5)
        score = performance_score(reg, np.full(HOURLY_ROWS, 0.3))
        # slopes both 0: v = 1 - |0 - 0| = 1 at every shift, k* = 0; precision 1 - 0.2 / 0.5 = 0.6
        assert (score.accuracy, score.delay) == pytest.approx((1.0, 1.0), abs=1e-12)
        assert score.precision == pytest.approx(0.6, abs=1e-12)

    def test_a_shallow_drift_loses_its_slope_difference(self):
        reg = np.full(HOURLY_ROWS, 0.5)
        resp = 0.5 + 0.03 * np.arange(HOURLY_ROWS) / 10  # 0.003 MW per row, under the 0.05 threshold
        score = performance_score(reg, resp)
        assert score.accuracy == pytest.approx(1 - 0.003, abs=1e-12)
        assert score.delay == pytest.approx(1.0, abs=1e-12)

    def test_a_steep_response_to_a_flat_signal_is_judged_by_slopes_not_correlation(self):
        reg = np.full(HOURLY_ROWS, 0.5)
        resp = 0.2 * np.arange(HOURLY_ROWS)  # 0.2 MW per row: steep, but the signal is not
        assert performance_score(reg, resp).accuracy == pytest.approx(0.8, abs=1e-12)

    def test_the_slope_rule_is_not_clipped_at_zero(self):
        reg = np.full(HOURLY_ROWS, 0.5)
        resp = 1.5 * np.arange(HOURLY_ROWS)  # slope 1.5: the template gives 1 - 1.5 = -0.5, not 0
        assert performance_score(reg, resp).accuracy == pytest.approx(-0.5, abs=1e-12)


def test_anticorrelated_windows_count_zero_not_negative():
    # given a steep rising signal and a steep falling response: correlation -1 at every shift
    reg = 0.2 * np.arange(HOURLY_ROWS)
    detail = window_details(reg, -reg)
    # then each window is worth max(0, -1) = 0 and the first shift, k* = 0, is the best
    assert detail.accuracy.tolist() == [0.0] * 331
    assert set(detail.best_shift.tolist()) == {0}


# --- vectorised code against the loop transcription ------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_score_matches_the_template_loop_on_an_hour_of_random_data(seed):
    rng = np.random.default_rng(seed)
    reg = np.cumsum(rng.normal(0, 0.08, HOURLY_ROWS))  # random walk: a mix of steep and flat windows
    resp = np.roll(reg, rng.integers(0, 6)) * rng.uniform(0.5, 1.2) + rng.normal(0, 0.05, HOURLY_ROWS)
    score = performance_score(reg, resp)
    accuracy, delay, precision = template_score(reg.tolist(), resp.tolist())
    assert score.accuracy == pytest.approx(accuracy, abs=1e-9)
    assert score.delay == pytest.approx(delay, abs=1e-9)
    assert score.precision == pytest.approx(precision, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(min_value=61, max_value=90),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    step=st.sampled_from([0.01, 0.05, 0.2, 1.0]),
)
def test_vectorised_score_matches_the_template_loop_on_any_length(rows, seed, step):
    rng = np.random.default_rng(seed)
    reg = np.cumsum(rng.normal(0, step, rows)) + 0.1
    resp = reg + rng.normal(0, step, rows)
    score = performance_score(reg, resp)
    accuracy, delay, precision = template_score(reg.tolist(), resp.tolist())
    assert (score.accuracy, score.delay, score.precision) == pytest.approx((accuracy, delay, precision), abs=1e-9)
    assert score.scored_rows == rows - 31


# --- input checking -----------------------------------------------------------------------------------------------


def test_it_refuses_series_too_short_for_one_window():
    with pytest.raises(ScoringError, match="at least 61 rows"):
        performance_score(np.ones(60), np.ones(60))


def test_it_refuses_mismatched_or_missing_values():
    with pytest.raises(ScoringError, match="equal length"):
        performance_score(np.ones(100), np.ones(99))
    resp = np.ones(100)
    resp[5] = np.nan
    with pytest.raises(ScoringError, match="finite"):
        performance_score(np.ones(100), resp)


def test_a_signal_at_zero_throughout_has_no_precision():
    with pytest.raises(ScoringError, match="zero"):
        performance_score(np.zeros(100), np.zeros(100))


# --- mileage, the signal file and alignment onto 10-s rows ----------------------------------------------------------


def test_mileage_sums_absolute_changes():
    assert mileage([0.0, 0.5, -0.5, -0.25]) == pytest.approx(0.5 + 1.0 + 0.25)
    assert mileage([0.3]) == 0.0


def test_the_regd_test_file_reads_as_2_second_samples_with_its_published_mileage():
    trace = read_signal_csv(REGD_FILE)
    assert trace.name == "RegDTest"
    assert trace.values.size == 1201
    assert trace.duration_s == 2400
    assert set(np.diff(trace.offsets_s).tolist()) == {2}
    assert trace.values[0] == pytest.approx(0.00633)
    assert trace.mileage == pytest.approx(19.3, abs=0.05)


def test_the_regd_test_signal_followed_perfectly_scores_one_and_20_s_late_scores_29_30_delay():
    trace = read_signal_csv(REGD_FILE)
    grid = scoring_grid(0.0, 241)  # 40 min of 10-s rows: 210 scored + 31 look-ahead
    reg = align_signal(trace.offsets_s, trace.values, grid, capacity_mw=2.0)
    assert reg[1] == pytest.approx(2.0 * -0.07157)  # t = 10 s lands on the sixth 2-s value
    assert performance_score(reg, reg).composite == pytest.approx(1.0, abs=1e-12)
    late = align_response([(trace.offsets_s + 20, 2.0 * trace.values)], grid)  # nothing before t = 20 s
    assert performance_score(reg, late).delay == pytest.approx(29 / 30, abs=1e-12)


def test_sample_hold_takes_the_last_value_at_or_before_each_row_and_never_a_future_one():
    times = np.array([0.0, 1.5, 3.1, 9.9, 10.0, 31.0])
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    held = sample_hold(times, values, np.array([-1.0, 0.0, 3.0, 10.0, 20.0, 25.0]), max_age_s=10.0)
    assert held[0] != held[0]  # NaN: nothing known yet
    assert held[1:5].tolist() == [1.0, 2.0, 5.0, 5.0]
    assert np.isnan(held[5])  # last reading 15 s old: stale


def test_fleet_response_sums_vehicles_and_never_credits_missing_telemetry():
    grid = np.array([10.0, 20.0, 30.0])
    first = (np.array([9.0, 19.0, 29.0]), np.array([0.2, 0.4, 0.6]))
    second = (np.array([8.0]), np.array([0.1]))  # stops reporting after t = 8 s
    assert align_response([first, second], grid, max_age_s=5.0).tolist() == pytest.approx([0.3, 0.4, 0.6])


def test_alignment_refuses_a_signal_with_gaps():
    with pytest.raises(ScoringError, match="no value"):
        align_signal(np.array([0.0, 2.0]), np.array([0.1, 0.2]), scoring_grid(0.0, 5), capacity_mw=1.0)
