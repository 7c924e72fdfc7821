"""IEEE 1547-2018 ranges of allowable settings, kept as data (``data/ieee1547_2018.json``, with its sources).

What may change the agent's protection, and how far: every must-trip setting the CSMS sends (SetDERControl
HF/LF/HV/LV MustTrip), every enter-service and frequency-droop setting, and the local thresholds of the agent's own
islanding detection. A setting outside the range for the configured abnormal operating performance category is
refused as a whole (``SettingRefused``), never clipped: the previous settings stay in force.

Two rules beyond the tables keep a setting from switching protection off:

- a must-trip curve must carry every stage of its family (over-voltage: OV2 and OV1; under-frequency: UF1 and
  UF2; ...), one point each, each inside its stage's range; a curve without OV2, or with a clearing time past the
  maximum, is refused, not applied;
- the agent's own ROCOF and vector-shift thresholds may not sit inside what IEEE 1547 obliges a DER to ride
  through (6.5.2.5, 6.5.2.6): tripping there would disconnect healthy DER during grid disturbances (the GB event of
  9 August 2019 lost ~150 MW of DER to vector-shift relays set at 6 degrees).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

CATEGORIES = ("I", "II", "III")
DATA_FILE = "ieee1547_2018.json"
EPS = 1e-9


class SettingRefused(ValueError):
    """A setting outside the allowed ranges; ``info`` says which and why (for statusInfo and the security event)."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


@cache
def table() -> dict[str, Any]:
    raw = resources.files("edge_agent.data").joinpath(DATA_FILE).read_text()
    data: dict[str, Any] = json.loads(raw)
    return data


def check_category(category: str) -> str:
    if category not in CATEGORIES:
        raise SettingRefused(f"abnormal operating performance category must be one of {', '.join(CATEGORIES)}")
    return category


@dataclass(frozen=True, slots=True)
class Stage:
    """One must-trip stage (e.g. OV2) with its default and its range of allowable settings."""

    name: str
    quantity: str  # "voltage" (pu) or "frequency" (Hz)
    over: bool
    threshold: float
    clearing_s: float
    threshold_range: tuple[float, float]
    clearing_range: tuple[float, float]

    def allows(self, threshold: float, clearing_s: float) -> bool:
        lo, hi = self.threshold_range
        c_lo, c_hi = self.clearing_range
        return lo - EPS <= threshold <= hi + EPS and c_lo - EPS <= clearing_s <= c_hi + EPS


def stages(category: str, nominal_hz: float = 60.0) -> tuple[Stage, ...]:
    """Every must-trip stage for the category; frequencies scaled by nominal/60 (IEEE 1547 is written for 60 Hz)."""
    check_category(category)
    k = nominal_hz / 60.0
    out = []
    for quantity, rows, scale in (
        ("frequency", table()["frequency_trips"], k),
        ("voltage", table()["voltage_trips"][category], 1.0),
    ):
        for name, row in rows.items():
            out.append(
                Stage(
                    name=name,
                    quantity=quantity,
                    over=bool(row["over"]),
                    threshold=row["default"][0] * scale,
                    clearing_s=float(row["default"][1]),
                    threshold_range=(row["threshold"][0] * scale, row["threshold"][1] * scale),
                    clearing_range=(float(row["clearing_s"][0]), float(row["clearing_s"][1])),
                )
            )
    return tuple(out)


def family(category: str, nominal_hz: float, quantity: str, over: bool) -> list[Stage]:
    """The stages of one family, most severe first (OV2 before OV1, UF2 before UF1)."""
    found = [s for s in stages(category, nominal_hz) if s.quantity == quantity and s.over is over]
    return sorted(found, key=lambda s: -s.threshold if over else s.threshold)


def check_trip_curve(
    category: str, nominal_hz: float, quantity: str, over: bool, points: list[tuple[float, float]]
) -> list[tuple[Stage, float, float]]:
    """(clearing s, threshold) points of a must-trip curve -> (stage, threshold, clearing) for each stage.

    The points are matched to the stages by severity (the most extreme threshold is stage 2). Refused: a point count
    other than the family's stage count (a missing stage would switch that trip off), a value that is not a finite
    number, any threshold or clearing time outside its stage's range of allowable settings.
    """
    fam = family(category, nominal_hz, quantity, over)
    names = "/".join(s.name for s in fam)
    if len(points) != len(fam):
        raise SettingRefused(
            f"{names} must-trip curve needs exactly {len(fam)} points (one per stage), got {len(points)}"
        )
    if not all(math.isfinite(x) for point in points for x in point):
        raise SettingRefused(f"{names}: every curve value must be a finite number")
    ordered = sorted(points, key=lambda p: -p[1] if over else p[1])
    out = []
    unit = "Hz" if quantity == "frequency" else "pu"
    for stage, (clearing, threshold) in zip(fam, ordered, strict=True):
        if not stage.allows(threshold, clearing):
            lo, hi = stage.threshold_range
            c_lo, c_hi = stage.clearing_range
            raise SettingRefused(
                f"{stage.name} {threshold:g} {unit} in {clearing:g} s is outside IEEE 1547-2018 Category {category}"
                f" ({lo:g}-{hi:g} {unit}, {c_lo:g}-{c_hi:g} s)"
            )
        out.append((stage, threshold, clearing))
    return out


def _within(name: str, value: float, bounds: list[float], unit: str) -> None:
    lo, hi = bounds
    if not (math.isfinite(value) and lo - EPS <= value <= hi + EPS):
        raise SettingRefused(f"{name} {value:g} {unit} is outside IEEE 1547-2018 ({lo:g}-{hi:g} {unit})")


def check_enter_service(
    *, v_low_pu: float, v_high_pu: float, f_low_hz: float, f_high_hz: float, delay_s: float, ramp_s: float,
    nominal_hz: float = 60.0,
) -> None:  # fmt: skip
    es = table()["enter_service"]
    k = nominal_hz / 60.0
    _within("enter-service low voltage", v_low_pu, es["v_low_pu"]["range"], "pu")
    _within("enter-service high voltage", v_high_pu, es["v_high_pu"]["range"], "pu")
    _within("enter-service low frequency", f_low_hz, [x * k for x in es["f_low_hz"]["range"]], "Hz")
    _within("enter-service high frequency", f_high_hz, [x * k for x in es["f_high_hz"]["range"]], "Hz")
    _within("enter-service delay", delay_s, es["delay_s"]["range"], "s")
    _within("enter-service ramp", ramp_s, es["ramp_s"]["range"], "s")


def check_droop(
    category: str, *, deadband_over_hz: float, deadband_under_hz: float, over_droop: float, under_droop: float,
    response_time_s: float,
) -> None:  # fmt: skip
    fd = table()["frequency_droop"][check_category(category)]
    _within("droop deadband (over)", deadband_over_hz, fd["deadband_hz"], "Hz")
    _within("droop deadband (under)", deadband_under_hz, fd["deadband_hz"], "Hz")
    _within("droop (over)", over_droop, fd["droop_pu"], "pu")
    _within("droop (under)", under_droop, fd["droop_pu"], "pu")
    _within("droop response time", response_time_s, fd["response_time_s"], "s")


def rocof_ride_through(category: str) -> float:
    """The ROCOF (Hz/s) a DER of this category must ride through (IEEE 1547-2018 6.5.2.5)."""
    return float(table()["ride_through"]["rocof_hz_per_s"][check_category(category)])


def phase_jump_ride_through(phases: int) -> float:
    """The phase-angle jump (degrees) a DER must ride through (IEEE 1547-2018 6.5.2.6)."""
    key = "single_phase" if phases == 1 else "multi_phase"
    return float(table()["ride_through"]["phase_jump_deg"][key])


# Defaults of the agent's passive islanding detection, from public practice, kept just outside the ride-through:
# - ROCOF: GB Engineering Recommendation G99 sets loss-of-mains ROCOF at 1 Hz/s with a 500 ms delay (since the 2019
#   Accelerated Loss of Mains Change Programme; before it 0.125 Hz/s, which tripped DER on 9 August 2019).
#   VDE-AR-N 4105 requires DER to withstand 2 Hz/s over 500 ms; IEEE 1547-2018 6.5.2.5 requires 0.5 / 2.0 / 3.0 Hz/s
#   (Cat I / II / III). Default: the category's ride-through + 0.5 Hz/s of measurement margin, over a 500 ms
#   window (so Category I gets G99's 1 Hz/s; II 2.5 Hz/s, III 3.5 Hz/s).
# - Vector shift: G59 used 6 degrees (12 degrees on some networks); G99 no longer allows it for new DER, and
#   IEEE 1547-2018 6.5.2.6 requires riding through 20 degrees (multi-phase) / 60 degrees (single-phase).
#   Default: that ride-through + 5 degrees (65 degrees single-phase, 25 degrees three-phase).
ROCOF_MARGIN_HZ_PER_S = 0.5
ROCOF_WINDOW_S = 0.5
VECTOR_SHIFT_MARGIN_DEG = 5.0


def default_rocof(category: str) -> float:
    return rocof_ride_through(category) + ROCOF_MARGIN_HZ_PER_S


def default_vector_shift(phases: int) -> float:
    return phase_jump_ride_through(phases) + VECTOR_SHIFT_MARGIN_DEG


def check_islanding(
    category: str, phases: int, *, rocof_hz_per_s: float, rocof_window_s: float, vector_shift_deg: float
) -> None:
    """The agent's own ROCOF / vector-shift thresholds: above the ride-through, windows that still allow 2 s."""
    rt = rocof_ride_through(category)
    if not (math.isfinite(rocof_hz_per_s) and rocof_hz_per_s > rt):
        raise SettingRefused(
            f"ROCOF threshold {rocof_hz_per_s:g} Hz/s must exceed Category {category}'s ride-through ({rt:g} Hz/s)"
        )
    min_window = float(table()["ride_through"]["rocof_min_window_s"])
    if not min_window <= rocof_window_s <= 1.0:
        raise SettingRefused(
            f"ROCOF window must be {min_window:g}-1 s (a 2 s islanding deadline), not {rocof_window_s:g}"
        )
    jump = phase_jump_ride_through(phases)
    if not (math.isfinite(vector_shift_deg) and vector_shift_deg > jump):
        raise SettingRefused(
            f"vector-shift threshold {vector_shift_deg:g} deg must exceed the {jump:g} deg phase jump a"
            f" {'single' if phases == 1 else 'multi'}-phase DER must ride through"
        )
