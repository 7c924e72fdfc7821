"""Frequency (and voltage) sources: simulated, replayed from the real 1-s recording, or read from the meter.

Each source is a callable ``now -> (f_hz, v_pu, pll_locked)`` so the simulator's meter and the control loop can
share one. Faults (loss of grid, PLL unlock, frequency excursions) can be injected for tests and demos.
"""

from __future__ import annotations

import gzip
import math
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from edge_agent.hardware import Measurement

GridSample = tuple[float, float, bool]
_REPLAY_CACHE: dict[str, tuple[array[float], array[float]]] = {}
PACKAGED_RECORDING = "grid-frequency-voltage-1s-one-day.csv.gz"


@dataclass
class Faults:
    """Injected grid conditions, applied on top of any source until cleared."""

    frequency_hz: float | None = None  # force this frequency (0.0 = dead grid)
    voltage_pu: float | None = None
    pll_locked: bool = True

    def apply(self, f_hz: float, v_pu: float) -> GridSample:
        return (
            f_hz if self.frequency_hz is None else self.frequency_hz,
            v_pu if self.voltage_pu is None else self.voltage_pu,
            self.pll_locked,
        )

    def clear(self) -> None:
        self.frequency_hz = self.voltage_pu = None
        self.pll_locked = True


@dataclass
class SimulatedFrequency:
    """Nominal frequency plus an Ornstein-Uhlenbeck wander (sigma, time constant) like a real interconnection."""

    nominal_hz: float = 60.0
    sigma_hz: float = 0.02
    tau_s: float = 30.0
    seed: int | None = None
    faults: Faults = field(default_factory=Faults)
    _dev: float = 0.0
    _last: float | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, now: float) -> GridSample:
        if self._last is not None and now > self._last:
            dt = now - self._last
            a = math.exp(-dt / self.tau_s)
            self._dev = self._dev * a + self._rng.gauss(0.0, self.sigma_hz * math.sqrt(1 - a * a))
        self._last = now
        return self.faults.apply(self.nominal_hz + self._dev, 1.0)


def load_recording(path: str | Path | None = None) -> tuple[array[float], array[float]]:
    """Frequency (Hz) and voltage (pu) columns of the 1-s recording; the packaged copy by default. Cached."""
    key = str(path) if path is not None else PACKAGED_RECORDING
    if key in _REPLAY_CACHE:
        return _REPLAY_CACHE[key]
    if path is None:
        raw = resources.files("edge_agent.data").joinpath(PACKAGED_RECORDING).read_bytes()
        text = gzip.decompress(raw).decode()
    else:
        p = Path(path)
        text = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
    freq, volt = array("d"), array("d")
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split(",")
        try:
            freq.append(float(cols[1]) * 60.0)
            volt.append(float(cols[3]))
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{key}:{line_no}: expected 'hours,f1_pu,f2_pu,v1_pu,v2_pu'") from exc
    if not freq:
        raise ValueError(f"{key}: no samples")
    _REPLAY_CACHE[key] = (freq, volt)
    return freq, volt


@dataclass
class ReplayFrequency:
    """Replays the recording at ``speed`` x real time from ``offset_s``, linearly interpolated, wrapping at the end.

    Many agents share one loaded copy; give each its own ``offset_s`` so the fleet does not move in lockstep.
    """

    path: str | Path | None = None
    offset_s: float = 0.0
    speed: float = 1.0
    t0: float | None = None
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self._f, self._v = load_recording(self.path)

    def __call__(self, now: float) -> GridSample:
        if self.t0 is None:
            self.t0 = now
        pos = self.offset_s + (now - self.t0) * self.speed
        n = len(self._f)
        i = int(pos) % n
        j = (i + 1) % n
        frac = pos - math.floor(pos)
        f = self._f[i] + (self._f[j] - self._f[i]) * frac
        v = self._v[i] + (self._v[j] - self._v[i]) * frac
        return self.faults.apply(f, v)


@dataclass
class MeterFrequency:
    """Frequency and voltage from the meter's latest reading (``reading`` returns it, e.g. the station's last)."""

    reading: Callable[[], Measurement | None]
    nominal_voltage_v: float = 240.0
    faults: Faults = field(default_factory=Faults)

    def __call__(self, now: float) -> GridSample:
        m = self.reading()
        if m is None:
            return (float("nan"), 0.0, False)
        f, v, locked = self.faults.apply(m.frequency_hz, m.voltage_v / self.nominal_voltage_v)
        return f, v, locked and m.pll_locked
